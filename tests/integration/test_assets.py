"""Assets during the flip, on a real 1-host sandbox: after a release is activated, a static
file only the previous release has (an old page's hashed asset) is still served, from
previous.release; nothing else of the previous release is: not its PHP, not its dotfiles.

Two pools, one per branch of the Apache rules: the demo pool `www` (the release root is
the web root, no front controller) and `shop` (the demo app under public/, every other
path through index.php).
"""

from __future__ import annotations

import http.client
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fpm_fleet.sandbox import demo

from .conftest import Sandbox, bring_up, fab, ok, tear_down, with_pool

SECRET = "old-env-secret-5e1f-never-served"
SHOP = """
[pools.shop]
replicas = 2
max_children = 4
server_name = "shop.test"
document_root = "public"
front_controller = "index.php"
"""


@pytest.fixture(scope="module", params=["apache", "nginx"])
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """One host, once with each web server: the rules are each server's own."""
    box = bring_up(1, web=request.param)
    yield box
    assert tear_down() == []


@pytest.fixture(scope="module")
def inv(box: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sandbox inventory plus the shop pool."""
    return with_pool(box, SHOP, tmp_path_factory.mktemp("assets"))


def web_root(pool: str) -> str:
    return "public" if pool == "shop" else ""


def deploy(inv: Path, pool: str, release: str) -> None:
    """The demo app with its hashed asset, and files only this release has: a PHP script
    and a .env, in the web root and (.env) in the release root."""
    src = inv.parent / f"{pool}-{release}"
    root = demo.build(src / web_root(pool), release, asset=True)
    (root / f"only-{release}.php").write_text(f"<?php echo 'ran {release}';\n")
    for d in {root, src}:
        (d / ".env").write_text(f"SECRET={SECRET}\n")
    os.chmod(src, 0o755)
    ok(fab("deploy", "--release", release, "--pool", pool, "--source", str(src), "--plain",
           inventory_path=inv))


def get(box: Sandbox, pool: str, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(box.addresses()[0], 80, timeout=15)
    try:
        conn.request("GET", path, headers={"Host": "shop.test" if pool == "shop" else "www",
                                           "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


@pytest.fixture(scope="module", params=["www", "shop"])
def flipped(request: pytest.FixtureRequest, box: Sandbox, inv: Path) -> str:
    """The pool with a1 deployed, then a2 activated over it."""
    pool: str = request.param
    deploy(inv, pool, "a1")
    deploy(inv, pool, "a2")
    return pool


def test_previous_release_names_the_release_the_activation_replaced(box: Sandbox,
                                                                    flipped: str) -> None:
    pool_dir = box.pool_dir(0).parent / flipped  # beside www, under the host's root
    assert os.readlink(pool_dir / "current.release") == "releases/a2"
    assert os.readlink(pool_dir / "previous.release") == "releases/a1"


def test_an_asset_only_the_old_release_has_is_served_with_its_content(box: Sandbox,
                                                                      flipped: str) -> None:
    status, body = get(box, flipped, "/" + demo.asset_path("a1"))
    assert (status, body) == (200, "/* fpm-fleet demo a1 */\n")
    assert get(box, flipped, "/" + demo.asset_path("a2")) == (200, "/* fpm-fleet demo a2 */\n")


def test_a_file_both_releases_have_comes_from_the_current_one(box: Sandbox,
                                                              flipped: str) -> None:
    assert get(box, flipped, "/release.txt") == (200, "a2\n")


def test_php_only_in_the_old_release_is_neither_run_nor_sent(box: Sandbox,
                                                            flipped: str) -> None:
    status, body = get(box, flipped, "/only-a1.php")
    assert status in (403, 404), (status, body)
    assert "ran a1" not in body and "<?php" not in body
    # the current release's own script still runs
    assert get(box, flipped, "/only-a2.php") == (200, "ran a2")


def test_dotfiles_of_the_old_release_are_not_served(box: Sandbox, flipped: str) -> None:
    for path in ("/.env", "/%2eenv", "/assets/../.env"):
        status, body = get(box, flipped, path)
        assert status in (400, 403, 404), (path, status)
        assert SECRET not in body, path


def test_a_path_neither_release_has_is_not_served_from_the_old_one(box: Sandbox,
                                                                   flipped: str) -> None:
    status, body = get(box, flipped, "/assets/app.000000.css")
    if flipped == "shop":  # the front controller answers it (the demo's index page)
        assert status == 200 and "release a2" in body
    else:
        assert status == 404
