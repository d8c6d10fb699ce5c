<?php
// fpm-fleet demo: includes one file, sleeps, includes a second one. Each part prints the
// release it was read from; a pinned replica never mixes two releases in one answer.
header('Content-Type: text/plain');
include __DIR__ . '/lib/part1.php';
usleep(max(0, min(30000, (int)($_GET['ms'] ?? 1000))) * 1000);
include __DIR__ . '/lib/part2.php';
