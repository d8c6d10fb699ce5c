<?php
// fpm-fleet demo: a fast request. Names the release and the worker that answered.
header('Content-Type: text/plain');
echo "pong @RELEASE@ pid=", getmypid(), "\n";
