<?php
// fpm-fleet demo: a slow request, sleeps ?ms=N milliseconds (at most 60 s).
header('Content-Type: text/plain');
$ms = max(0, min(60000, (int)($_GET['ms'] ?? 1000)));
usleep($ms * 1000);
echo "slept {$ms}ms @RELEASE@ pid=", getmypid(), "\n";
