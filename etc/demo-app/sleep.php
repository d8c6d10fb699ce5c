<?php
// fpm-fleet demo: a slow request, sleeps ?ms=N milliseconds (at most 60 s), then says how long
// it really slept: a sleep cut short (FPM's SIGQUIT interrupts usleep) shows up in the answer.
header('Content-Type: text/plain');
$ms = max(0, min(60000, (int)($_GET['ms'] ?? 1000)));
$start = hrtime(true);
usleep($ms * 1000);
$slept = intdiv(hrtime(true) - $start, 1000000);
echo "slept {$slept}ms @RELEASE@ pid=", getmypid(), " asked={$ms}ms\n";
