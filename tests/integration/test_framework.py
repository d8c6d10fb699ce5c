"""A framework application (etc/framework-app: Symfony components, web root public/, every
route through index.php) deployed beside the demo pool on a real mixed 2-host sandbox (h1
Apache, h2 nginx): the tests that address one host run on a host of each web server
(`web_host`), the others on both hosts at once.

The fleet's base tree carries Debian's php-symfony-routing, php-symfony-http-foundation and
php-symfony-dotenv, which the example is built on.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .conftest import ROOT, Sandbox, WebHost, fab, ok, with_pool

APP = ROOT / "etc" / "framework-app"
SERVER_NAME = "app.test"
SECRETS = ("fake-secret-4c1d2e0f-never-served", "git-config-never-served")
POOL = f"""
[pools.app]
replicas = 2
max_children = 4
server_name = "{SERVER_NAME}"
document_root = "public"
front_controller = "index.php"
health_path = "/health.php"
shared = ["storage"]
before_activate = ["php bin/console cache:warm", "chgrp www-data storage/ && chmod g+ws storage/"]
"""


@pytest.fixture(scope="module")
def box(mixed2: Sandbox) -> Sandbox:
    return mixed2


@pytest.fixture(scope="module")
def inv(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sandbox inventory plus the framework pool."""
    return with_pool(box, POOL, tmp_path_factory.mktemp("framework"))


def build(base: Path, release: str) -> Path:
    """The example app as a release, with a .git/ of its own (deployed: it must not leak)."""
    dest = base / f"app-{release}"
    shutil.copytree(APP, dest)
    (dest / "release.txt").write_text(f"{release}\n")
    (dest / ".git").mkdir()
    (dest / ".git" / "config").write_text(f"[core]\n\tsecret = {SECRETS[1]}\n")
    return dest


def deploy(inv: Path, release: str) -> None:
    proc = fab("deploy", "--release", release, "--pool", "app", "--plain",
               "--source", str(build(inv.parent, release)), inventory_path=inv)
    if proc.returncode != 0 and "Symfony/Component" in proc.stdout + proc.stderr:
        pytest.fail("the fleet hosts lack Debian's php-symfony-* packages")
    ok(proc)


def get(address: str, path: str, port: int = 80, timeout: float = 15
        ) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": SERVER_NAME, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode(errors="replace")
    finally:
        conn.close()


@dataclass
class AppLoad:
    """Requests to the framework pool (by its server_name), fast ones and 1 s ones, on every
    host, until stopped; every answer but a 200 is a failure."""

    addresses: list[str]
    requests: int = 0
    failures: list[str] = field(default_factory=list)
    releases: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(self, address: str, path: str) -> None:
        while not self.stop.is_set() and self.requests < 50_000:
            try:
                status, headers, body = get(address, path)
            except OSError as exc:
                self.failures.append(f"{address}{path}: {exc}")
                continue
            self.requests += 1
            if status != 200:
                self.failures.append(f"{address}{path}: HTTP {status} {body[:80]!r}")
            self.releases[headers.get("X-Release", "?")] += 1


@contextmanager
def app_load(box: Sandbox) -> Iterator[AppLoad]:
    load = AppLoad(box.addresses())
    threads = [threading.Thread(target=load.worker, args=(a, p), daemon=True)
               for a in load.addresses for p in ("/hello/load?n=1", "/sleep/1000")]
    for t in threads:
        t.start()
    time.sleep(1.5)  # slow requests are in flight before the deploy starts
    try:
        yield load
    finally:
        load.stop.set()
        for t in threads:
            t.join(timeout=20)


def visits(address: str) -> int:
    status, _, body = get(address, "/visits")
    assert status == 200, body
    return int(body)


def test_first_deploy_serves_the_routes_through_the_front_controller(box: Sandbox,
                                                                     inv: Path) -> None:
    deploy(inv, "v1")
    for address in box.addresses():
        status, headers, body = get(address, "/hello/fleet")
        assert (status, body) == (200, "Hello, fleet!\n")
        # before_activate compiled the routes in the release before it went live
        assert headers["X-Routes"] == "compiled" and headers["X-Release"] == "v1"
        assert get(address, "/release")[2] == "v1\n"
        assert get(address, "/health.php")[2] == "ok v1\n"
        assert get(address, "/nope")[0] == 404  # the app's own 404, through index.php


def test_front_controller_gets_the_original_request_uri_and_path_info(
        inv: Path, web_host: WebHost) -> None:
    status, _, body = get(web_host.address, "/request/a/b%20c?x=1&y=two")
    assert status == 200
    seen = json.loads(body)
    assert seen["REQUEST_URI"] == "/request/a/b%20c?x=1&y=two"
    assert seen["PATH_INFO"] == "/request/a/b c"
    assert seen["SCRIPT_NAME"] == "/index.php"
    assert seen["path_info"] == "/request/a/b%20c"  # Symfony's own, from REQUEST_URI
    assert seen["query"] == {"x": "1", "y": "two"}
    assert re.fullmatch(r"/.+/app/current/public/index\.php", seen["SCRIPT_FILENAME"])


def test_static_files_are_served_and_nothing_outside_public_or_hidden_is(
        inv: Path, web_host: WebHost) -> None:
    address = web_host.address
    status, headers, body = get(address, "/robots.txt")
    assert (status, body) == (200, (APP / "public" / "robots.txt").read_text())
    assert "X-Release" not in headers  # the web server served it, PHP never ran
    assert headers["Server"].lower().startswith(web_host.web)
    assert get(address, "/assets/app.css")[0] == 200
    for path in ("/.env", "/.git/config", "/.git/", "/%2eenv", "/x/../.env", "/public/.env",
                 "/../.env"):
        status, _, body = get(address, path)
        assert status in (400, 403, 404), path
        assert not any(secret in body for secret in SECRETS), path
    # outside public/: not files of the web root, so the app answers them (its 404)
    for path in ("/release.txt", "/src/app.php", "/bin/console", "/storage/visits.txt",
                 "/var/cache/url_matching_routes.php"):
        status, _, body = get(address, path)
        assert status == 404, path
        assert not any(secret in body for secret in SECRETS), path


def test_second_deploy_under_load_fails_no_request_and_every_route_answers_v2(
        box: Sandbox, inv: Path) -> None:
    before = {a: visits(a) for a in box.addresses()}
    with app_load(box) as load:
        deploy(inv, "v2")
    assert load.requests > 0
    assert load.failures == [], load.failures[:10]
    assert set(load.releases) <= {"v1", "v2"} and load.releases["v2"] > 0
    for address in box.addresses():
        # enough requests to reach both replicas of the pool
        assert {get(address, "/release")[2] for _ in range(10)} == {"v2\n"}
        assert get(address, "/hello/v2")[1]["X-Release"] == "v2"
        # storage/ is shared: the counter carried on across the release change
        assert visits(address) == before[address] + 1


def test_check_requests_the_pool_through_the_web_server_and_fails_naming_it(
        inv: Path, tmp_path: Path) -> None:
    proc = ok(fab("check", inventory_path=inv))
    assert proc.stdout.count(":80/health.php (Host: app.test): 200") == 2, proc.stdout
    broken = tmp_path / "hosts.toml"
    broken.write_text(inv.read_text().replace('health_path = "/health.php"',
                                              'health_path = "/missing.php"'))
    proc = fab("check", inventory_path=broken)
    assert proc.returncode == 1
    assert proc.stdout.count("/missing.php (Host: app.test): HTTP 404") == 2, proc.stdout


def test_a_listen_port_other_than_80_is_listened_on_and_checked(box: Sandbox, inv: Path,
                                                                tmp_path: Path) -> None:
    text = inv.read_text()
    moved = text.replace("[[hosts]]", '[defaults.apache]\nlisten = "*:8088"\n\n'
                         '[defaults.nginx]\nlisten = "*:8088"\n\n[[hosts]]', 1)
    other = tmp_path / "hosts-8088.toml"
    other.write_text(moved)
    try:
        ok(fab("setup", inventory_path=other))
        for address in box.addresses():
            status, _, body = get(address, "/release", port=8088)
            assert (status, body) == (200, "v2\n")
        proc = ok(fab("check", inventory_path=other))
        assert proc.stdout.count("port 8088") >= 2, proc.stdout
        assert proc.stdout.count(":8088/health.php (Host: app.test): 200") == 2, proc.stdout
    finally:
        ok(fab("setup", inventory_path=inv))
    for address in box.addresses():
        assert get(address, "/release")[2] == "v2\n"


def test_fab_stress_loads_a_non_demo_app_through_its_server_name(box: Sandbox,
                                                                 inv: Path) -> None:
    proc = ok(fab("stress", "--pool", "app", "--path", "/hello/stress", "--path", "/release",
                  "--duration", "3", "--json", inventory_path=inv))
    stats = json.loads(proc.stdout)
    assert {s["host"] for s in stats} == {"h1", "h2"}
    for st in stats:
        assert st["requests"] > 50 and st["failures"] == 0, st
