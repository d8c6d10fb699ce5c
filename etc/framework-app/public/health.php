<?php
// The pool's health_path (`/health.php`): a real file, so that fpm-fleet's health gate can
// run it straight over a replica's own FastCGI socket (no Apache, no rewrite), and Apache
// serves it as any existing .php file. Same answer as the /health route.
declare(strict_types=1);

use Symfony\Component\HttpFoundation\Request;

require dirname(__DIR__) . '/src/bootstrap.php';

app_health(Request::createFromGlobals(), [])->send();
