<?php
// Front controller: Apache sends here every request that is not an existing file under
// public/, with the original REQUEST_URI (query string included) and PATH_INFO.
declare(strict_types=1);

use Symfony\Component\HttpFoundation\Request;

require dirname(__DIR__) . '/src/bootstrap.php';

app_handle(Request::createFromGlobals())->send();
