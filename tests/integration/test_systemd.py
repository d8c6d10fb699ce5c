"""Replicas are systemd services on real Debian hosts: a reboot brings a host back serving
the same release with no fab command, a stopped replica stays stopped across it, and
workers left by a dead master are flagged and belong to their service."""

from __future__ import annotations

import subprocess
import time

import pytest

from fpm_fleet.sandbox import hosts as sandbox

from .conftest import Sandbox, assert_no_failures, fab, get, load, ok, slept_in_full


@pytest.fixture(scope="module")
def box(fleet3: Sandbox) -> Sandbox:
    return fleet3


def boot_id(box: Sandbox, host: int) -> str:
    return box.run(host, "cat", "/proc/sys/kernel/random/boot_id").stdout.strip()


def serves(address: str) -> str | None:
    try:
        status, body = get(address, "/ping.php", timeout=2)
    except OSError:
        return None
    return body if status == 200 else None


def test_a_rebooted_host_comes_back_serving_the_same_release_by_itself(box: Sandbox) -> None:
    release = box.status("--host", "h2")[0]["release"]
    before = boot_id(box, 1)
    with load(box, hosts=["h1", "h3"]) as stats:
        reboot = subprocess.run(
            ["ssh", "-i", str(box.path.parent / "id_ed25519"), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={box.path.parent / 'known_hosts'}",
             f"root@{box.addresses()[1]}", "systemctl", "reboot"],
            capture_output=True, text=True, timeout=30, check=False)
        started = time.monotonic()
        time.sleep(0.5)
        while not (serves(box.addresses()[1]) or "").startswith(f"pong {release}"):
            assert time.monotonic() - started < 60, "h2 never came back"
            time.sleep(0.1)
        back = time.monotonic() - started
    print(f"reboot: h2 serves {release} again {back:.2f}s after `systemctl reboot`")
    assert reboot.returncode in (0, 255), reboot.stderr  # 255: the host hung up on us
    assert boot_id(box, 1) != before, "the host did not reboot"
    assert_no_failures(stats)  # the other hosts never noticed
    rows = box.status("--host", "h2")  # same address, same host key: known_hosts still fits
    assert all(r["ok"] and r["release"] == release and r["service"] == "active"
               for r in rows), rows


def test_a_stopped_replica_stays_stopped_across_a_reboot(box: Sandbox) -> None:
    ok(fab("stop", "--host", "h3", "--replica", "2"))
    box.run(2, "systemctl", "reboot")
    time.sleep(1)
    assert sandbox.wait_booted(box.host(2)) in ("running", "degraded")
    rows = {r["replica"]: r for r in box.status("--host", "h3")}
    assert rows[2]["pid"] is None and rows[2]["service"] == "inactive", rows
    assert rows[1]["ok"], rows
    ok(fab("start", "--host", "h3"))
    assert all(r["ok"] for r in box.status("--host", "h3"))


def test_workers_of_a_dead_master_are_flagged_then_stopped_with_their_service(
        box: Sandbox) -> None:
    slow = box.slow_fcgi_request(0, 1, 4000)
    time.sleep(0.5)
    master = box.master_pid(0, 1)
    box.run(0, "kill", "-KILL", master)
    time.sleep(0.3)
    rows = {r["replica"]: r for r in box.status("--host", "h1")}
    answer, _ = slow.communicate(timeout=30)
    assert any("workers run outside any live master" in p for p in rows[1]["problems"]), rows
    assert slept_in_full(answer, 4000), f"the worker was cut short: {answer!r}"
    deadline = time.monotonic() + 20
    while not all(r["ok"] for r in box.status("--host", "h1")):
        assert time.monotonic() < deadline, box.status("--host", "h1")
        time.sleep(0.2)
