<?php
// The application: its routes, its controllers, and one function that turns a Request
// into a Response.
declare(strict_types=1);

use Symfony\Component\HttpFoundation\JsonResponse;
use Symfony\Component\HttpFoundation\Request;
use Symfony\Component\HttpFoundation\Response;
use Symfony\Component\Routing\Exception\MethodNotAllowedException;
use Symfony\Component\Routing\Exception\ResourceNotFoundException;
use Symfony\Component\Routing\Matcher\CompiledUrlMatcher;
use Symfony\Component\Routing\Matcher\UrlMatcher;
use Symfony\Component\Routing\Matcher\UrlMatcherInterface;
use Symfony\Component\Routing\RequestContext;
use Symfony\Component\Routing\Route;
use Symfony\Component\Routing\RouteCollection;

function app_routes(): RouteCollection
{
    // Controllers are named, not closures: the compiled matcher stores plain values.
    $routes = new RouteCollection();
    $routes->add('home', new Route('/', ['_controller' => 'home']));
    $routes->add('hello', new Route('/hello/{name}', ['_controller' => 'hello'],
                                    ['name' => '[^/]+']));
    $routes->add('release', new Route('/release', ['_controller' => 'release_action']));
    $routes->add('health', new Route('/health', ['_controller' => 'health']));
    $routes->add('visits', new Route('/visits', ['_controller' => 'visits']));
    $routes->add('sleep', new Route('/sleep/{ms}', ['_controller' => 'sleep'],
                                    ['ms' => '\d{1,5}']));
    $routes->add('request', new Route('/request/{rest}', ['_controller' => 'request'],
                                      ['rest' => '.*']));
    return $routes;
}

/** The compiled routes written by `bin/console cache:warm`, else the slow path. */
function app_matcher(RequestContext $context): UrlMatcherInterface
{
    if (is_file(ROUTES_CACHE)) {
        return new CompiledUrlMatcher(require ROUTES_CACHE, $context);
    }
    return new UrlMatcher(app_routes(), $context);
}

function app_release(): string
{
    $text = @file_get_contents(APP_ROOT . '/release.txt');
    return $text === false ? 'unknown' : trim($text);
}

function app_handle(Request $request): Response
{
    $context = (new RequestContext())->fromRequest($request);
    try {
        $params = app_matcher($context)->matchRequest($request);
    } catch (ResourceNotFoundException $e) {
        return new Response("not found\n", 404, ['Content-Type' => 'text/plain']);
    } catch (MethodNotAllowedException $e) {
        return new Response("method not allowed\n", 405, ['Content-Type' => 'text/plain']);
    }
    $response = ('app_' . $params['_controller'])($request, $params);
    $response->headers->set('X-Release', app_release());
    $response->headers->set('X-Routes', is_file(ROUTES_CACHE) ? 'compiled' : 'uncompiled');
    return $response;
}

function app_text(string $body, int $status = 200): Response
{
    return new Response($body, $status, ['Content-Type' => 'text/plain; charset=utf-8']);
}

function app_home(Request $request, array $params): Response
{
    $secret = ($_SERVER['APP_SECRET'] ?? '') !== '' ? 'set' : 'missing';
    return app_text(sprintf("%s, release %s (APP_SECRET %s)\n", $_SERVER['APP_NAME'] ?? '?',
                        app_release(), $secret));
}

function app_hello(Request $request, array $params): Response
{
    return app_text(sprintf("Hello, %s!\n", $params['name']));
}

function app_release_action(Request $request, array $params): Response
{
    return app_text(app_release() . "\n");
}

/** Ready when the release boots and its routes were compiled (before_activate ran). */
function app_health(Request $request, array $params): Response
{
    return is_file(ROUTES_CACHE) ? app_text('ok ' . app_release() . "\n")
                                 : app_text("routes not compiled: run bin/console cache:warm\n", 500);
}

/** A counter in storage/, shared by every release: it survives deploys. */
function app_visits(Request $request, array $params): Response
{
    $fh = @fopen(APP_ROOT . '/storage/visits.txt', 'c+');
    if ($fh === false) {
        return app_text("storage/ is not writable by the PHP-FPM user\n", 500);
    }
    flock($fh, LOCK_EX);
    $count = (int)stream_get_contents($fh) + 1;
    ftruncate($fh, 0);
    rewind($fh);
    fwrite($fh, (string)$count);
    flock($fh, LOCK_UN);
    fclose($fh);
    return app_text("$count\n");
}

/** A slow request (at most 10 s), to keep requests in flight during a rolling restart. */
function app_sleep(Request $request, array $params): Response
{
    $ms = min(10000, (int)$params['ms']);
    usleep($ms * 1000);
    return app_text(sprintf("slept %d ms in release %s\n", $ms, app_release()));
}

/** What the front controller was given: the vhost's contract, checked by the tests. */
function app_request(Request $request, array $params): Response
{
    return new JsonResponse([
        'path_info' => $request->getPathInfo(),
        'query' => $request->query->all(),
        'REQUEST_URI' => $_SERVER['REQUEST_URI'] ?? null,
        'PATH_INFO' => $_SERVER['PATH_INFO'] ?? null,
        'SCRIPT_NAME' => $_SERVER['SCRIPT_NAME'] ?? null,
        'SCRIPT_FILENAME' => $_SERVER['SCRIPT_FILENAME'] ?? null,
    ]);
}
