"""Replica lifecycle on a real 2-host sandbox, under load with slow requests in flight."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .conftest import FAB, ROOT, Sandbox, assert_no_failures, fab, get, load, ok


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


def by_replica(rows: list[dict], host: str) -> dict[int, dict]:
    return {r["replica"]: r for r in rows if r["host"] == host}


@pytest.fixture(scope="module")
def two_releases(fleet2: Sandbox) -> Sandbox:
    """v2 deployed then rolled back: both releases on every host, v1 current and pinned."""
    fleet2.build("v2")
    ok(fab("deploy", "--release", "v2"))
    ok(fab("rollback"))
    return fleet2


def test_restart_twice_under_load_fails_no_request(fleet2: Sandbox) -> None:
    with load(fleet2) as stats:
        first = ok(fab("restart", "--plain"))
        ok(fab("restart", "--plain"))
    assert_no_failures(stats)
    assert sum(st.slow for st in stats) > 0
    assert "replicas done" in first.stdout
    for step in ("guard", "drain", "wait idle", "stop", "start", "health", "enable"):
        assert f"www-2 {step} ok" in first.stderr
    log_line = [line for line in first.stderr.splitlines() if line.startswith("log: ")][-1]
    log_text = Path(log_line.removeprefix("log: ")).read_text()
    assert "cgi-fcgi" in log_text and "cgi-fcgi" not in first.stderr


def test_start_of_a_running_replica_is_a_no_op_that_says_so(fleet2: Sandbox) -> None:
    proc = ok(fab("start", "--host", "h1", "--plain"))
    assert "already running" in proc.stderr


def test_atomic_request_sees_one_release_and_replicas_keep_their_pin(two_releases: Sandbox
                                                                      ) -> None:
    box = two_releases
    address, pool_dir = box.addresses()[0], box.pool_dir(0)
    answers: list[str] = []
    slow = threading.Thread(target=lambda: answers.append(get(address,
                                                              "/atomic.php?ms=3000")[1]))
    slow.start()
    time.sleep(1.0)
    repoint(pool_dir, "v2")
    slow.join()
    assert answers == ["part1 v1\npart2 v1\n"]
    assert get(address, "/release.txt")[1].strip() == "v2", "static files switch at once"
    for _ in range(10):
        assert get(address, "/ping.php")[1].startswith("pong v1 ")
    ok(fab("restart", "--host", "h1"))
    for _ in range(10):
        assert get(address, "/ping.php")[1].startswith("pong v2 ")


def test_status_reports_drift_and_json_parses(two_releases: Sandbox) -> None:
    repoint(two_releases.pool_dir(1), "v2")
    proc = fab("status")
    assert proc.returncode != 0
    assert "drift: h2/www" in proc.stderr
    rows = two_releases.status("--host", "h2")
    assert len(rows) == 2
    for row in rows:
        assert {"host", "pool", "replica", "lb_status", "busy", "ping_ok", "release", "pid",
                "ok"} <= set(row)
        assert row["release"] == "v1" and row["current_release"] == "v2"
    ok(fab("restart", "--host", "h2"))
    assert all(r["release"] == "v2" and r["ok"] for r in two_releases.status())
    assert ok(fab("status")).returncode == 0


def test_guard_refuses_to_stop_the_last_healthy_replica(fleet2: Sandbox) -> None:
    address = fleet2.addresses()[0]
    with load(fleet2, hosts=["h1"]) as stats:
        ok(fab("stop", "--host", "h1", "--replica", "1"))
        refused = fab("stop", "--host", "h1", "--replica", "2")
        assert get(address, "/ping.php")[0] == 200
        rows = by_replica(fleet2.status("--host", "h1"), "h1")
        ok(fab("start", "--host", "h1"))
    assert refused.returncode != 0
    assert "refusing to take www-2 out" in refused.stderr
    assert rows[1]["pid"] is None and "Dis" in rows[1]["lb_status"]
    assert rows[2]["ok"] and rows[2]["lb_status"] == "Init Ok"
    assert_no_failures(stats)
    assert all(r["ok"] for r in fleet2.status("--host", "h1"))


def test_failing_health_check_keeps_replica_out_and_pool_serving(fleet2: Sandbox) -> None:
    pool_dir = fleet2.pool_dir(0)
    good = os.readlink(pool_dir / "current.release").split("/")[-1]
    bad = pool_dir / "releases" / "sick"
    shutil.copytree(pool_dir / "releases" / good, bad, symlinks=True, dirs_exist_ok=True)
    (bad / "health.php").write_text("<?php http_response_code(503); echo 'sick';\n")
    try:
        with load(fleet2, hosts=["h1"]) as stats:
            repoint(pool_dir, "sick")
            proc = fab("restart", "--host", "h1", "--plain")
            rows = by_replica(fleet2.status("--host", "h1"), "h1")
            assert get(fleet2.addresses()[0], "/ping.php")[1].startswith(f"pong {good}")
        assert proc.returncode != 0
        assert "failed its health gate on sick" in proc.stderr
        assert "health check answered 503" in proc.stderr
        sick = [r for r in rows.values() if r["release"] == "sick"]
        assert len(sick) == 1 and "Dis" in sick[0]["lb_status"]
        healthy = [r for r in rows.values() if r["release"] == good]
        assert len(healthy) == 1 and healthy[0]["lb_status"] == "Init Ok"
        assert_no_failures(stats)
    finally:
        repoint(pool_dir, good)
        ok(fab("restart", "--host", "h1"))
        shutil.rmtree(bad)
    assert all(r["ok"] for r in fleet2.status("--host", "h1"))


def test_restart_as_root_login(fleet2: Sandbox, tmp_path: Path) -> None:
    """The fleet's inventory logs in as the deploy user with sudo; a root login works too."""
    text = fleet2.path.read_text().replace('user = "deploy"', 'user = "root"')
    inv = tmp_path / "hosts-root.toml"
    inv.write_text(text)
    checked = ok(fab("check", "--host", "h2", inventory_path=inv))
    assert "via root login" in checked.stdout and "FAIL" not in checked.stdout
    with load(fleet2, hosts=["h2"]) as stats:
        ok(fab("restart", "--host", "h2", inventory_path=inv))
    assert_no_failures(stats)


def test_sigterm_mid_restart_leaves_no_healthy_replica_disabled(fleet2: Sandbox) -> None:
    address = fleet2.addresses()[0]
    env = {**os.environ, "FABRIC_INVENTORY": str(fleet2.path)}
    env.pop("CI", None)
    slow = threading.Thread(target=lambda: get(address, "/sleep.php?ms=6000", timeout=30))
    slow.start()
    time.sleep(0.5)
    proc = subprocess.Popen([FAB, "restart", "--host", "h1", "--plain"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.5)  # the busy replica is drained and waited on by now
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    slow.join()
    assert proc.returncode == 130, err
    assert "interrupted: the state of every selected replica now" in err
    assert out.count("Init Ok") == 2, out  # the report: both replicas back in rotation
    rows = fleet2.status("--host", "h1")
    assert all(r["ok"] and r["lb_status"] == "Init Ok" for r in rows), rows
