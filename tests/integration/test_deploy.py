"""deploy, rollback, releases and cleanup on a real 3-host sandbox, under load with slow
requests in flight during every deploy and rollback."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import FAB, ROOT, Background, Sandbox, assert_no_failures, fab, get, load, ok


def pinned(box: Sandbox) -> set[tuple[str, int, str]]:
    return {(r["host"], r["replica"], r["release"]) for r in box.status()}


def all_on(box: Sandbox, release: str) -> bool:
    rows = box.status()
    return len(rows) == 6 and all(r["release"] == release and r["ok"] for r in rows)


@pytest.fixture(scope="module")
def box(mixed3: Sandbox) -> Sandbox:
    """h2 runs nginx: every test here runs for both web servers."""
    return mixed3


def test_deploy_v2_under_load_pins_every_replica_without_a_failed_request(box: Sandbox) -> None:
    box.build("v2")
    with load(box) as stats:
        proc = ok(fab("deploy", "--release", "v2", "--plain"))
    assert_no_failures(stats)
    assert all_on(box, "v2")
    assert sum(st.releases.get("v2", 0) for st in stats) > 0
    assert "v1 -> v2" in proc.stdout and "verified" in proc.stderr
    for address in box.addresses():
        assert get(address, "/release.txt")[1].strip() == "v2"


def test_rollback_in_parallel_goes_back_to_v1_the_same_way(box: Sandbox) -> None:
    with load(box) as stats:
        proc = ok(fab("rollback", "--parallel", "3", "--plain"))
    assert_no_failures(stats)
    assert all_on(box, "v1")
    assert "v2 -> v1" in proc.stdout


def test_failing_release_is_reverted_automatically_and_marked_bad(box: Sandbox) -> None:
    box.build("v3", unhealthy=True)
    with load(box) as stats:
        proc = fab("deploy", "--release", "v3", "--plain")
    assert proc.returncode != 0
    assert "reverted" in proc.stdout and "not reached (untouched)" in proc.stdout
    assert_no_failures(stats)
    assert all_on(box, "v1")
    h1 = box.pool_dir(0)
    assert (h1 / "state" / "bad" / "v3").exists()
    assert not (box.pool_dir(1) / "releases" / "v3").exists(), "h2 must stay untouched"
    releases = ok(fab("releases", "--host", "h1")).stdout
    assert "v3" in releases and "BAD" in releases
    # the default rollback target skips the bad release; the dry run shows every command
    dry = ok(fab("rollback", "--dry-run")).stdout
    assert not [line for line in dry.splitlines() if "v3" in line]
    assert "[activate v2]" in dry and "[stop www-2]" in dry
    # the real steps, as the sudo user runs them: guard, wait idle and gate included
    assert "rollback on h1, as deploy:" in dry
    assert "sudo -n -- systemctl stop fpm-fleet-www@2.service" in dry
    assert "[idle probe www-2] (check, assumed to pass)" in dry
    assert "[gate www-2] (check, assumed to pass)" in dry
    assert "  == guard www-1\n" in dry and "  == wait idle www-1\n" in dry
    assert "  == health www-1\n" in dry


def test_bad_names_and_missing_source_are_refused_before_any_host(box: Sandbox,
                                                                   tmp_path: Path) -> None:
    unreachable = tmp_path / "hosts.toml"
    unreachable.write_text(box.path.read_text().replace('address = "198.18.0.1',
                                                        'address = "198.18.0.20'))
    marker = Path("/tmp/x")
    marker.unlink(missing_ok=True)
    for name in ("../x", "a/b", "v1;touch /tmp/x", ".."):
        proc = fab("deploy", "--release", name, inventory_path=unreachable)
        assert proc.returncode == 2, proc.stderr
        assert "is not allowed" in proc.stderr and "unreachable" not in proc.stderr
    proc = fab("deploy", "--release", "v9", "--source", "/nonexistent/app",
               inventory_path=unreachable)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = fab("deploy", "--release", "v9", "--source", str(empty), inventory_path=unreachable)
    assert proc.returncode == 2 and "holds no files" in proc.stderr
    assert not marker.exists()


def test_existing_release_with_other_content_is_refused_and_dry_run_changes_nothing(
        box: Sandbox) -> None:
    box.build("v2", files=3)
    proc = fab("deploy", "--release", "v2")
    assert proc.returncode != 0 and "already exists with different content" in proc.stderr
    dry = ok(fab("deploy", "--release", "v9", "--dry-run"))
    assert "[activate v9]" in dry.stdout and "tar -xzf -" in dry.stdout
    assert not any((box.pool_dir(i) / "releases" / "v9").exists() for i in range(3))
    assert all_on(box, "v1")


def test_second_deploy_is_refused_while_the_first_holds_the_lock(box: Sandbox) -> None:
    box.build("v4")
    env = {**os.environ, "FABRIC_INVENTORY": str(box.path)}
    env.pop("CI", None)
    with load(box) as stats:
        first = subprocess.Popen([FAB, "deploy", "--release", "v4", "--plain"], cwd=ROOT,
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
        lock = box.pool_dir(0) / "state" / "lock"
        deadline = time.monotonic() + 30
        while not lock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        second = fab("deploy", "--release", "v4")
        _, err = first.communicate(timeout=300)
    assert_no_failures(stats)
    assert first.returncode == 0, err
    assert second.returncode == 6, second.stderr
    assert "locked by another run: `fab deploy --release v4" in second.stderr
    assert f"pid {first.pid}" in second.stderr
    assert not lock.exists(), "the lock is released at the end"
    assert all_on(box, "v4")


def test_restart_during_a_deploy_is_refused_naming_the_deploy(box: Sandbox,
                                                             tmp_path: Path) -> None:
    slow = with_pool_keys(box, tmp_path, 'before_activate = ["sleep 8"]')
    lock = box.pool_dir(0) / "state" / "lock"
    box.build("v4h")  # a new release: its hook runs (a prepared one is reused as it is)
    with load(box) as stats:
        deploy = Background("deploy", "--release", "v4h", "--host", "h1", "--plain",
                            inventory_path=slow)
        deploy.wait_for("shared links")
        assert lock.exists()
        restart = fab("restart", "--host", "h1", "--plain")
        stop = fab("stop", "--host", "h1", "--replica", "1", "--plain")
        code, _, err = deploy.finish()
    assert_no_failures(stats)
    assert code == 0, err
    for refused in (restart, stop):
        assert refused.returncode == 6, refused.stderr
        assert "locked by another run: `fab deploy --release v4h --host h1" in refused.stderr
    assert not lock.exists()
    box.build("v4")
    ok(fab("deploy", "--release", "v4", "--host", "h1", "--plain"))  # v4 reused as prepared
    assert all_on(box, "v4")


def test_a_hung_hook_is_ended_on_the_host_by_command_timeout_with_its_children(
        box: Sandbox, tmp_path: Path) -> None:
    hung = with_pool_keys(box, tmp_path, 'before_activate = ["sleep 31 & sleep 32"]')
    hung.write_text(hung.read_text().replace("[defaults]\n", "[defaults]\ncommand_timeout = 3\n"))
    box.build("v9")
    before = os.readlink(box.pool_dir(1) / "current.release")
    started = time.monotonic()
    proc = fab("deploy", "--release", "v9", "--host", "h2", "--plain", inventory_path=hung)
    assert proc.returncode == 5, proc.stderr
    assert "timed out on the host after 3s (command_timeout)" in proc.stderr
    assert time.monotonic() - started < 30
    left = box.run(1, "pgrep", "-f", "sleep 3[12]")
    assert left.returncode == 1, f"the hook's processes outlived it: {left.stdout}"
    assert not (box.pool_dir(1) / "state" / "lock").exists()
    assert os.readlink(box.pool_dir(1) / "current.release") == before


def test_unlock_removes_a_stale_lock_and_says_whose_it_was(box: Sandbox) -> None:
    lock = box.pool_dir(2) / "state" / "lock"
    lock.mkdir()
    (lock / "holder").write_text("ghost@nowhere pid=1 since=2020 cmd=fab deploy\n")
    box.as_deploy(lock, host=2)
    refused = fab("cleanup", "--host", "h3")
    assert refused.returncode != 0 and "ghost@nowhere" in refused.stderr
    proc = ok(fab("unlock", "--host", "h3"))
    assert "ghost@nowhere" in proc.stderr and not lock.exists()


def test_upload_killed_half_way_leaves_no_release_and_the_fleet_unchanged(box: Sandbox) -> None:
    box.build("v5", files=4000)
    env = {**os.environ, "FABRIC_INVENTORY": str(box.path)}
    env.pop("CI", None)
    before = pinned(box)
    proc = subprocess.Popen([FAB, "deploy", "--release", "v5", "--host", "h1", "--plain"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    staging = box.pool_dir(0) / "incoming" / "v5.partial"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (staging / "vendor").exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (staging / "vendor").exists(), "the upload was under way when it was killed"
    assert not (box.pool_dir(0) / "releases" / "v5").exists()
    assert pinned(box) == before and all_on(box, "v4")
    ok(fab("unlock", "--host", "h1"))
    with load(box, hosts=["h1"]) as stats:
        done = ok(fab("deploy", "--release", "v5", "--host", "h1", "--plain"))
    assert_no_failures(stats)
    assert "4000 linked" not in done.stderr and not staging.exists()


def test_cleanup_keeps_newest_current_previous_and_pinned(box: Sandbox) -> None:
    releases = box.pool_dir(1) / "releases"
    for i in range(7):
        old = releases / f"old{i}"
        old.mkdir()
        (old / "index.php").write_text("<?php echo 'old';\n")
        box.as_deploy(old, host=1)
        os.utime(old, (1_600_000_000 + i, 1_600_000_000 + i))
    os.utime(releases / "v1", (1_500_000_000, 1_500_000_000))  # oldest, but previous
    ok(fab("cleanup", "--host", "h2"))
    left = sorted(p.name for p in releases.iterdir())
    assert "v4" in left and "v1" in left, left  # current (pinned) and previous
    assert not (releases / "old0").exists() and not (releases / "old1").exists()
    assert len(left) <= 5 + 1, left
    assert all_on(box, "v4") or pinned(box)


def with_pool_keys(box: Sandbox, tmp_path: Path, keys: str) -> Path:
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text().replace("[pools.www]\n", f"[pools.www]\n{keys}\n"))
    return inv


def test_before_activate_runs_inside_the_release_and_a_failure_stops_the_host(
        box: Sandbox, tmp_path: Path) -> None:
    good = with_pool_keys(box, tmp_path, 'before_activate = ["test -f ping.php", '
                                         '"touch warmed-by-hook"]')
    box.build("v6")
    with load(box, hosts=["h3"]) as stats:
        ok(fab("deploy", "--release", "v6", "--host", "h3", inventory_path=good))
        assert (box.pool_dir(2) / "releases" / "v6" / "warmed-by-hook").exists()
        bad = with_pool_keys(box, tmp_path, 'before_activate = ["exit 7"]')
        box.build("v7")
        proc = fab("deploy", "--release", "v7", "--host", "h3", inventory_path=bad)
    assert proc.returncode != 0 and "before_activate `exit 7` failed" in proc.stderr
    assert os.readlink(box.pool_dir(2) / "current.release") == "releases/v6"
    assert_no_failures(stats)


def test_rollback_to_a_release_missing_on_a_host_is_refused(box: Sandbox) -> None:
    # v6 exists on h3 only (previous test)
    before = pinned(box)
    proc = fab("rollback", "--to", "v6")
    assert proc.returncode != 0
    assert "rollback refused, nothing changed" in proc.stderr and "h1" in proc.stderr
    assert pinned(box) == before


def test_sigterm_stops_a_parallel_run_on_every_host_at_once_and_puts_replicas_back(
        box: Sandbox) -> None:
    box.build("v8")
    with load(box) as stats:
        # all three at once: a canary stage of the three hosts
        run = Background("deploy", "--release", "v8", "--parallel", "3", "--canary", "3",
                         "--plain")
        for h in ("h1", "h2", "h3"):
            run.wait_for(f"[{h}] www-1 drain ok")
        signalled = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        while not all(any(line.startswith(f"[{h}] www-") and " interrupted " in line
                          for line in run.lines) for h in ("h1", "h2", "h3")):
            assert time.monotonic() - signalled < 10, "".join(run.lines)
            time.sleep(0.01)
        stopped_in = time.monotonic() - signalled
        code, _, err = run.finish(timeout=60)
    assert code == 130, err
    # every host stopped at its next step and put its replica back: a stop in flight waits
    # for the demo's 2 s requests at most
    assert stopped_in < 3.5, err
    assert_no_failures(stats)
    rows = box.status()
    # Apache shows a member in rotation as `Init Ok`, nginx's upstream as `Ok`
    assert all(r["ok"] and r["lb_status"] in ("Init Ok", "Ok") for r in rows), [
        (r["host"], r["replica"], r["lb_status"], r["problems"]) for r in rows]
    assert not any((box.pool_dir(i) / "state" / "lock").exists() for i in range(3))
