"""Replica lifecycle on a real mixed 2-host sandbox (h1 Apache, h2 nginx), under load with
slow requests in flight. The tests that address one host run on a host of each web server
(`web_host`); the others run on both hosts at once."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import (
    FAB,
    IN_ROTATION,
    ROOT,
    Sandbox,
    WebHost,
    assert_no_failures,
    fab,
    get,
    in_rotation,
    load,
    ok,
)


def repoint(pool_dir: Path, release: str) -> None:
    """What activation does: a temporary symlink renamed over current.release, owned by the
    deploy user as activation makes it (the pool directory is sticky: a root-owned link
    there could not be replaced by the next deploy)."""
    tmp = pool_dir / "current.release.test-tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"releases/{release}", tmp)
    owner = (pool_dir / "releases").stat()
    os.lchown(tmp, owner.st_uid, owner.st_gid)
    os.replace(tmp, pool_dir / "current.release")


def current(pool_dir: Path) -> str:
    return os.readlink(pool_dir / "current.release").split("/")[-1]


def by_replica(rows: list[dict], host: str) -> dict[int, dict]:
    return {r["replica"]: r for r in rows if r["host"] == host}


@pytest.fixture(scope="module")
def box(mixed2: Sandbox) -> Sandbox:
    return mixed2


@pytest.fixture(scope="module")
def two_releases(box: Sandbox) -> Sandbox:
    """v2 deployed then rolled back: both releases on every host, v1 current and pinned."""
    box.build("v2")
    ok(fab("deploy", "--release", "v2"))
    ok(fab("rollback"))
    return box


def test_restart_twice_under_load_fails_no_request(box: Sandbox) -> None:
    with load(box) as stats:
        first = ok(fab("restart", "--plain"))
        ok(fab("restart", "--plain"))
    assert_no_failures(stats)
    assert sum(st.slow for st in stats) > 0
    assert "replicas done" in first.stdout
    for host in ("h1", "h2"):
        for step in ("guard", "drain", "wait idle", "stop", "start", "health", "enable"):
            assert f"[{host}] www-2 {step} ok" in first.stderr, (host, step)
    log_line = [line for line in first.stderr.splitlines() if line.startswith("log: ")][-1]
    log_text = Path(log_line.removeprefix("log: ")).read_text()
    assert "cgi-fcgi" in log_text and "cgi-fcgi" not in first.stderr


def test_start_of_a_running_replica_is_a_no_op_that_says_so(web_host: WebHost) -> None:
    proc = ok(fab("start", "--host", web_host.name, "--plain"))
    assert "already running" in proc.stderr


def other_release(pool_dir: Path) -> tuple[str, str]:
    """(the release current.release names, the other of v1 and v2)."""
    now = current(pool_dir)
    return now, {"v1": "v2", "v2": "v1"}[now]


def test_atomic_request_sees_one_release_and_replicas_keep_their_pin(
        two_releases: Sandbox, web_host: WebHost) -> None:
    box = two_releases
    address, pool_dir = web_host.address, box.pool_dir(web_host.index)
    old, new = other_release(pool_dir)
    answers: list[str] = []
    slow = threading.Thread(target=lambda: answers.append(get(address,
                                                              "/atomic.php?ms=3000")[1]))
    slow.start()
    time.sleep(1.0)
    repoint(pool_dir, new)
    slow.join()
    assert answers == [f"part1 {old}\npart2 {old}\n"]
    assert get(address, "/release.txt")[1].strip() == new, "static files switch at once"
    for _ in range(10):
        assert get(address, "/ping.php")[1].startswith(f"pong {old} ")
    ok(fab("restart", "--host", web_host.name))
    for _ in range(10):
        assert get(address, "/ping.php")[1].startswith(f"pong {new} ")


def test_status_reports_drift_and_json_parses(two_releases: Sandbox,
                                              web_host: WebHost) -> None:
    old, new = other_release(two_releases.pool_dir(web_host.index))
    repoint(two_releases.pool_dir(web_host.index), new)
    proc = fab("status")
    assert proc.returncode != 0
    assert f"drift: {web_host.name}/www" in proc.stderr
    rows = two_releases.status("--host", web_host.name)
    assert len(rows) == 2
    for row in rows:
        assert {"host", "pool", "replica", "web", "lb_status", "busy", "ping_ok", "release",
                "pid", "ok"} <= set(row)
        assert row["web"] == web_host.web and in_rotation(row)
        assert row["release"] == old and row["current_release"] == new
    ok(fab("restart", "--host", web_host.name))
    assert all(r["release"] == new and r["ok"]
               for r in two_releases.status("--host", web_host.name))
    assert ok(fab("status", "--host", web_host.name)).returncode == 0


def test_guard_refuses_to_stop_the_last_healthy_replica(box: Sandbox,
                                                        web_host: WebHost) -> None:
    """Stop and start under load; status read under it too: the replica left serving has
    requests in flight, which its busy figure counts on both web servers."""
    name = web_host.name
    with load(box, hosts=[name]) as stats:
        ok(fab("stop", "--host", name, "--replica", "1"))
        refused = fab("stop", "--host", name, "--replica", "2")
        assert get(web_host.address, "/ping.php")[0] == 200
        rows = by_replica(box.status("--host", name), name)
        ok(fab("start", "--host", name))
    assert refused.returncode != 0
    assert "refusing to take www-2 out" in refused.stderr
    assert rows[1]["pid"] is None and "Dis" in rows[1]["lb_status"]
    assert rows[1]["busy"] == 0
    assert rows[2]["ok"] and in_rotation(rows[2]) and rows[2]["web"] == web_host.web
    assert rows[2]["busy"] >= 1, "the slow requests in flight are counted"
    assert_no_failures(stats)
    assert all(r["ok"] for r in box.status("--host", name))


def test_failing_health_check_keeps_replica_out_and_pool_serving(box: Sandbox,
                                                                 web_host: WebHost) -> None:
    name, pool_dir = web_host.name, box.pool_dir(web_host.index)
    good = current(pool_dir)
    bad = pool_dir / "releases" / "sick"
    shutil.copytree(pool_dir / "releases" / good, bad, symlinks=True, dirs_exist_ok=True)
    (bad / "health.php").write_text("<?php http_response_code(503); echo 'sick';\n")
    try:
        with load(box, hosts=[name]) as stats:
            repoint(pool_dir, "sick")
            proc = fab("restart", "--host", name, "--plain")
            rows = by_replica(box.status("--host", name), name)
            assert get(web_host.address, "/ping.php")[1].startswith(f"pong {good}")
        assert proc.returncode != 0
        assert "failed its health gate on sick" in proc.stderr
        assert "health check answered 503" in proc.stderr
        sick = [r for r in rows.values() if r["release"] == "sick"]
        assert len(sick) == 1 and "Dis" in sick[0]["lb_status"]
        healthy = [r for r in rows.values() if r["release"] == good]
        assert len(healthy) == 1 and in_rotation(healthy[0])
        assert_no_failures(stats)
    finally:
        repoint(pool_dir, good)
        ok(fab("restart", "--host", name))
        shutil.rmtree(bad)
    assert all(r["ok"] for r in box.status("--host", name))


def test_restart_as_root_login(box: Sandbox, tmp_path: Path) -> None:
    """The fleet's inventory logs in as the deploy user with sudo; a root login works too
    (on h2, the nginx host: no sudo in front of the nginx-members helper)."""
    text = box.path.read_text().replace('user = "deploy"', 'user = "root"')
    inv = tmp_path / "hosts-root.toml"
    inv.write_text(text)
    checked = ok(fab("check", "--host", "h2", inventory_path=inv))
    assert "via root login" in checked.stdout and "FAIL" not in checked.stdout
    with load(box, hosts=["h2"]) as stats:
        ok(fab("restart", "--host", "h2", inventory_path=inv))
    assert_no_failures(stats)
    assert {r["web"] for r in box.status("--host", "h2")} == {"nginx"}


def test_sigterm_mid_restart_leaves_no_healthy_replica_disabled(box: Sandbox,
                                                                web_host: WebHost) -> None:
    address = web_host.address
    env = {**os.environ, "FABRIC_INVENTORY": str(box.path)}
    env.pop("CI", None)
    slow = threading.Thread(target=lambda: get(address, "/sleep.php?ms=6000", timeout=30))
    slow.start()
    time.sleep(0.5)
    proc = subprocess.Popen([FAB, "restart", "--host", web_host.name, "--plain"], cwd=ROOT,
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)  # the busy replica is drained and waited on by now
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    slow.join()
    assert proc.returncode == 130, err
    assert "interrupted: the state of every selected replica now" in err
    # the report: both replicas back in rotation
    assert sum(f" {IN_ROTATION[web_host.web]} " in f" {line} " for line in out.splitlines()) \
        == 2, out
    rows = box.status("--host", web_host.name)
    assert all(r["ok"] and in_rotation(r) for r in rows), rows
