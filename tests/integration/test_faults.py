"""Faults tried for real on a 3-host sandbox with load running: each must cost no client
request and leave the fleet serving."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import Background, Sandbox, assert_no_failures, fab, get, load, netns_pids, ok


@pytest.fixture(scope="module")
def box(fleet3: Sandbox) -> Sandbox:
    return fleet3


def healthy(box: Sandbox) -> bool:
    rows = box.status()
    return len(rows) == 6 and all(r["ok"] for r in rows)


def serving(box: Sandbox) -> None:
    for address in box.addresses():
        assert get(address, "/ping.php")[0] == 200


def test_sshd_killed_mid_rollout_stops_it_and_the_host_keeps_serving(box: Sandbox) -> None:
    with load(box) as stats:
        run = Background("restart", "--plain")
        run.wait_for("[h1] www-1 drain ok")
        for pid in netns_pids("fpmf-h1", "sshd"):
            os.kill(pid, signal.SIGKILL)
        code, _, err = run.finish()
        serving(box)
    assert code != 0
    assert "h1: connection lost during" in err or "h1 (root@198.18.0.11:22)" in err, err
    assert "[h2]" not in err, "the rollout stopped at the failed host"
    assert_no_failures(stats)
    up = ok(fab("sandbox.up", "--hosts", "3", inventory_path=None))  # sshd back
    with load(box) as stats:
        restart = ok(fab("restart", "--host", "h1", "--plain"))
    # the first run that reaches h1 again (sandbox.up's deploy preflight) puts www-1 back
    assert "www-1 recover !" in up.stderr + restart.stderr
    assert "left by an interrupted run" in up.stderr + restart.stderr
    assert_no_failures(stats)
    assert healthy(box)


def slow_fcgi_request(netns: str, pool_dir: Path, n: int, ms: int) -> subprocess.Popen[str]:
    """A slow request straight to one replica's socket, from inside the host (as Apache's
    would be), so that replica's drain lasts a while."""
    env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/sleep.php", "QUERY_STRING": f"ms={ms}",
           "SCRIPT_FILENAME": str(pool_dir / "current" / "sleep.php"), "PATH": "/usr/bin:/bin"}
    sock = str(pool_dir / "run" / f"www-{n}.sock")
    return subprocess.Popen(["ip", "netns", "exec", netns, "cgi-fcgi", "-bind", "-connect",
                             sock], env=env, stdout=subprocess.PIPE, text=True)


def test_master_killed_while_it_drains(box: Sandbox) -> None:
    pool_dir = box.pool_dir(1)
    with load(box, hosts=["h2"]) as stats:
        in_flight = slow_fcgi_request("fpmf-h2", pool_dir, 1, 4000)
        time.sleep(0.5)
        run = Background("restart", "--host", "h2", "--replica", "1", "--plain")
        run.wait_for("[h2] www-1 drain ok")
        os.kill(int((pool_dir / "run" / "www-1.pid").read_text()), signal.SIGKILL)
        answer, _ = in_flight.communicate(timeout=30)
        code, _, err = run.finish()
    assert "slept 4000ms" in answer, "the request in flight outlived its master"
    assert code == 0, err
    assert "workers of a dead master stopped" in err
    assert_no_failures(stats)
    assert healthy(box)


def test_unreachable_balancer_manager_leaves_the_pool_untouched(box: Sandbox,
                                                                tmp_path: Path) -> None:
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text().replace(
        "[pools.www]", '[pools.www]\nmanager_url = "http://127.0.0.1:8089/balancer-manager"'))
    before = {(r["host"], r["replica"], r["pid"]) for r in box.status()}
    current = os.readlink(box.pool_dir(0) / "current.release")
    box.build("v2")
    with load(box) as stats:
        restart = fab("restart", inventory_path=inv)
        deploy = fab("deploy", "--release", "v2", inventory_path=inv)
    for proc in (restart, deploy):
        assert proc.returncode != 0
        assert "balancer-manager" in proc.stderr and "8089" in proc.stderr
    assert {(r["host"], r["replica"], r["pid"]) for r in box.status()} == before
    assert os.readlink(box.pool_dir(0) / "current.release") == current
    assert not (box.pool_dir(0) / "releases" / "v2").exists()
    assert_no_failures(stats)


def test_apache_graceful_restart_during_a_rollout(box: Sandbox) -> None:
    conf = box.pool_dir(0).parent / "apache" / "apache2.conf"
    with load(box, hosts=["h1"]) as stats:
        run = Background("restart", "--host", "h1", "--plain")
        run.wait_for("[h1] www-1 drain ok")
        subprocess.run(["ip", "netns", "exec", "fpmf-h1", "apache2", "-f", str(conf), "-k",
                        "graceful"], check=True)
        code, _, err = run.finish()
    assert code == 0, err
    assert_no_failures(stats)
    rows = box.status("--host", "h1")
    assert all(r["ok"] and r["lb_status"] == "Init Ok" and r["pid"] for r in rows), rows


def test_sigterm_mid_deploy_releases_the_lock_and_puts_replicas_back(box: Sandbox) -> None:
    box.build("v3")
    lock = box.pool_dir(0) / "state" / "lock"
    with load(box, hosts=["h1"]) as stats:
        run = Background("deploy", "--release", "v3", "--host", "h1", "--plain")
        run.wait_for("[h1] www-1 drain ok")
        run.proc.send_signal(signal.SIGTERM)
        code, _, err = run.finish()
    assert code == 130, err
    assert "interrupted" in err and not lock.exists()
    assert_no_failures(stats)
    assert all(r["ok"] for r in box.status("--host", "h1"))


def test_sigkill_mid_deploy_is_detected_by_the_next_run(box: Sandbox) -> None:
    box.build("v4")
    lock = box.pool_dir(0) / "state" / "lock"
    with load(box, hosts=["h1"]) as stats:
        run = Background("deploy", "--release", "v4", "--host", "h1", "--plain")
        run.wait_for("[h1] www-1 drain ok")
        run.proc.send_signal(signal.SIGKILL)
        run.finish()
        assert lock.exists(), "a killed run cannot release its lock"
        again = ok(fab("deploy", "--release", "v4", "--host", "h1", "--plain"))
    assert "took over the lock of a killed run" in again.stderr
    assert "left by an interrupted run" in again.stderr
    assert_no_failures(stats)
    assert not lock.exists()
    rows = box.status("--host", "h1")
    assert all(r["ok"] and r["release"] == "v4" for r in rows)


def in_host(netns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command in the host's own mount namespace (its sshd's), as its admin would."""
    sshd = netns_pids(netns, "sshd")[0]
    return subprocess.run(["nsenter", "--mount", f"--target={sshd}", "--", *argv],
                          capture_output=True, text=True, check=False)


def test_disk_full_during_upload_activates_nothing(box: Sandbox, tmp_path: Path) -> None:
    tiny_root = box.pool_dir(0).parent / "tiny"
    tiny_root.mkdir(exist_ok=True)
    mounted = in_host("fpmf-h1", "mount", "-t", "tmpfs", "-o", "size=2m", "fpm-fleet-test",
                      str(tiny_root))
    assert mounted.returncode == 0, mounted.stderr
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text() + f'\n[pools.tiny]\nreplicas = 2\nroot = "{tiny_root}"\n'
                   'server_name = "tiny"\n')
    source = tmp_path / "app"
    box.build("big", files=1000)
    subprocess.run(["cp", "-a", str(box.fleet.pools[0].source), str(source)], check=True)
    try:
        ok(fab("setup", "--host", "h1", inventory_path=inv))
        with load(box, hosts=["h1"]) as stats:
            proc = fab("deploy", "--release", "big", "--pool", "tiny", "--host", "h1",
                       "--source", str(source), inventory_path=inv)
        listing = in_host("fpmf-h1", "find", str(tiny_root), "-mindepth", "1",
                          "-path", "*/releases/*", "-o", "-path", "*/incoming/*", "-o",
                          "-name", "current.release")
        assert listing.returncode == 0 and listing.stdout == "", listing.stdout
    finally:
        in_host("fpmf-h1", "umount", str(tiny_root))
        tiny_root.rmdir()
        ok(fab("setup", "--host", "h1"))
    assert proc.returncode != 0
    assert "No space left on device" in proc.stderr and "nothing was installed" in proc.stderr
    assert_no_failures(stats)
    assert healthy(box)
