"""The surge strategy on a 3-host fleet under load (fast requests, 2 s requests, atomic.php
checking that one request sees one release): deploy, restart, a failed gate, rollback,
and keep_previous's instant rollback, each with 0 failed requests."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from .conftest import Background, Sandbox, assert_no_failures, fab, load, ok


@pytest.fixture(scope="module")
def box(surge3: Sandbox) -> Sandbox:
    return surge3


def serving(box: Sandbox, release: str) -> dict[str, list[int]]:
    """Per host, the replicas in rotation; each must be healthy and pinned to `release`, and
    the other set standby or parked."""
    rows = box.status()
    assert all(r["ok"] for r in rows), rows
    out: dict[str, list[int]] = {}
    for r in rows:
        if r["role"] == "serving":
            assert r["release"] == release, r
            out.setdefault(r["host"], []).append(r["replica"])
    return out


def test_a_surge_deploy_starts_the_standby_set_and_retires_the_old_one(box: Sandbox) -> None:
    assert serving(box, "v1") == {"h1": [1, 2], "h2": [1, 2], "h3": [1, 2]}
    box.build("v2")
    with load(box) as stats:
        proc = ok(fab("deploy", "--release", "v2", "--plain"))
        # the hosts retire the old sets by themselves: their 2 s requests finish first
        rows = box.settled()
    assert_no_failures(stats)  # atomic.php included: no answer mixed two releases
    assert serving(box, "v2") == {"h1": [3, 4], "h2": [3, 4], "h3": [3, 4]}
    assert "[h1] www-3,www-4 start ok" in proc.stderr
    assert "[h1] www-1,www-2 retire ok" in proc.stderr
    assert {r["role"] for r in rows if r["replica"] in (1, 2)} == {"standby"}
    assert {r["service"] for r in rows if r["replica"] in (1, 2)} == {"inactive"}
    retired = (box.pool_dir(0) / "state" / "retire.log").read_text()
    assert "www-1 unused after" in retired and retired.rstrip().endswith("done"), retired


def test_a_surge_restart_flips_the_sets_on_the_same_release(box: Sandbox) -> None:
    with load(box) as stats:
        ok(fab("restart", "--plain"))
        box.settled()
    assert_no_failures(stats)
    assert serving(box, "v2") == {"h1": [1, 2], "h2": [1, 2], "h3": [1, 2]}


def test_a_new_replica_failing_its_gate_leaves_the_old_set_serving(box: Sandbox) -> None:
    box.build("v3", unhealthy=True)
    with load(box) as stats:
        proc = fab("deploy", "--release", "v3", "--plain")
    assert proc.returncode != 0
    assert "failed its health gate on v3" in proc.stderr
    assert "reverted" in proc.stdout and "not reached (untouched)" in proc.stdout
    assert_no_failures(stats)
    assert serving(box, "v2") == {"h1": [1, 2], "h2": [1, 2], "h3": [1, 2]}
    assert (box.pool_dir(0) / "state" / "bad" / "v3").exists()


def test_rollback_without_keep_previous_starts_the_previous_release(box: Sandbox) -> None:
    with load(box) as stats:
        proc = ok(fab("rollback", "--plain"))
        box.settled()
    assert_no_failures(stats)
    assert "v2 -> v1" in proc.stdout
    assert serving(box, "v1") == {"h1": [3, 4], "h2": [3, 4], "h3": [3, 4]}
    assert "www-3,www-4 start ok" in proc.stderr  # the set the failed gate left standby


def keep_previous(box: Sandbox, tmp_path: Path) -> Path:
    """The fleet's inventory with keep_previous = true (it changes no rendered file)."""
    path = tmp_path / "hosts.toml"
    path.write_text(box.path.read_text().replace('strategy = "surge"',
                                                 'strategy = "surge"\nkeep_previous = true'))
    return path


def test_keep_previous_parks_the_old_set_and_rolls_back_by_flipping_flags(
        box: Sandbox, tmp_path: Path) -> None:
    inv = keep_previous(box, tmp_path)
    box.build("v4")
    with load(box) as stats:
        ok(fab("deploy", "--release", "v4", "--plain", inventory_path=inv))
        parked = [r for r in box.status() if r["role"] == "parked"]
        releases = ok(fab("releases", inventory_path=inv)).stdout
        started = time.monotonic()
        back = ok(fab("rollback", "--plain", inventory_path=inv))
        took = time.monotonic() - started
    assert_no_failures(stats)
    assert sorted((r["host"], r["replica"], r["release"]) for r in parked) == [
        (h, n, "v1") for h in ("h1", "h2", "h3") for n in (3, 4)]
    assert "(parked)" in releases
    assert "parked set already runs v1: nothing to start" in back.stderr
    assert serving(box, "v1") == {"h1": [3, 4], "h2": [3, 4], "h3": [3, 4]}
    print(f"rollback with keep_previous, 3 hosts one after another: {took:.2f}s")


def test_sigterm_mid_parallel_surge_puts_every_host_back_in_service(box: Sandbox) -> None:
    box.build("v5")
    with load(box) as stats:
        run = Background("deploy", "--release", "v5", "--parallel", "3", "--canary", "3",
                         "--plain")
        for h in ("h1", "h2", "h3"):
            run.wait_for(f"[{h}] www-")  # every host is in its rollout
        run.wait_for(" health ")
        run.proc.send_signal(signal.SIGTERM)
        code, _, err = run.finish(timeout=120)
    assert code == 130, err
    assert_no_failures(stats)
    rows = box.status()
    assert all(r["ok"] for r in rows if r["role"] == "serving"), rows
    assert all(len([r for r in rows if r["host"] == h and r["role"] == "serving"]) >= 2
               for h in ("h1", "h2", "h3")), rows
    assert not any((box.pool_dir(i) / "state" / "lock").exists() for i in range(3))
    # the next deploy finishes the job from whatever state the interrupt left
    with load(box) as stats:
        ok(fab("deploy", "--release", "v5", "--plain"))
    assert_no_failures(stats)
    assert set(map(len, serving(box, "v5").values())) == {2}
