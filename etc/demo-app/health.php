<?php
// fpm-fleet demo: the application's health check. fpm-fleet wants a 200 over the
// replica's own socket before it puts the replica back into rotation.
header('Content-Type: text/plain');
$healthy = @HEALTHY@;
if (!$healthy) {
    http_response_code(500);
    echo "unhealthy @RELEASE@\n";
    exit;
}
echo "ok @RELEASE@\n";
