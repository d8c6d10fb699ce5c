<?php
// Shared by public/index.php, public/health.php and bin/console: Debian's packaged Symfony
// components (php-symfony-routing, -http-foundation, -dotenv) and the release's .env.
declare(strict_types=1);

use Symfony\Component\Dotenv\Dotenv;

define('APP_ROOT', dirname(__DIR__));
define('ROUTES_CACHE', APP_ROOT . '/var/cache/url_matching_routes.php');

foreach (['Routing', 'HttpFoundation', 'Dotenv'] as $component) {
    require_once "/usr/share/php/Symfony/Component/$component/autoload.php";
}
require_once __DIR__ . '/app.php';

// APP_ROOT is this release (under current/ in a replica, which pins it): the .env, the
// compiled routes and release.txt all come from the release that runs the request.
(new Dotenv())->usePutenv(false)->load(APP_ROOT . '/.env');
