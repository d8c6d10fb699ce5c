<?php
// fpm-fleet demo application, release @RELEASE@.
header('Content-Type: text/html; charset=utf-8');
?>
<!doctype html>
<title>fpm-fleet demo @RELEASE@</title>
<h1>fpm-fleet demo, release @RELEASE@</h1>
<p>Served by PHP-FPM worker <?= getmypid() ?>.</p>
<ul>
  <li><a href="/ping.php">ping.php</a>: fast request</li>
  <li><a href="/sleep.php?ms=2000">sleep.php?ms=2000</a>: slow request</li>
  <li><a href="/atomic.php?ms=1000">atomic.php</a>: two includes around a sleep</li>
  <li><a href="/release.txt">release.txt</a>: static file</li>
  <li><a href="/health.php">health.php</a>: health check</li>
</ul>
