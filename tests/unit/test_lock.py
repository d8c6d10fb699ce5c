"""The pool lock: holder lines, who may take a lock over, and the remote commands run for
real against a pool directory in tmp_path through a local runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fpm_fleet.core.errors import ConnectError, LockError, RemoteResult
from fpm_fleet.host import lock
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.lock import Holder
from fpm_fleet.host.pool import HostPool
from fpm_fleet.remote.runner import ask_by_running


@pytest.fixture
def target(local_fleet, local_runner):
    host, pool = local_fleet.hosts[0], local_fleet.pools[0]
    return local_runner, host, pool, Layout.of(host, pool)


def holder(**changes: object) -> Holder:
    base = Holder("alice@ctl", "m1", "b1", 4242, "777", "2026-01-01T00:00:00+0000",
                  "fab deploy --release v2")
    return replace(base, **changes)  # type: ignore[arg-type]


def lock_file(layout: Layout) -> Path:
    return Path(lock.lock_path(layout))


# --- holder lines ----------------------------------------------------------------------------

def test_a_holder_line_names_the_machine_boot_pid_and_start_and_parses_back():
    h = holder()
    assert h.line() == ("alice@ctl machine=m1 boot=b1 pid=4242 start=777 "
                        "since=2026-01-01T00:00:00+0000 cmd=fab deploy --release v2")
    assert lock.parse_holder(h.line() + "\n") == h


def test_my_holder_names_this_machine_and_this_process():
    mine = lock.me("fab restart")
    assert mine.pid == os.getpid() and mine.machine == lock.machine_id() != ""
    assert mine.start == lock.process_start(os.getpid()) != ""


def test_a_newline_in_the_command_cannot_forge_holder_fields():
    mine = lock.me("fab deploy\nbob@x machine=m2 pid=1")
    assert "\n" not in mine.line()
    assert lock.parse_holder(mine.line()) == mine


def test_an_old_style_or_damaged_holder_is_not_parsed():
    assert lock.parse_holder("ghost@nowhere pid=1 since=2020 cmd=fab deploy") is None
    assert lock.parse_holder("") is None


# --- who may take a lock over ----------------------------------------------------------------

def test_a_holder_on_another_machine_is_never_dead():
    assert not lock.provably_dead(holder(machine="m2"), holder(pid=1),
                                  start_of=lambda pid: "")


def test_a_holder_whose_pid_is_gone_on_this_machine_is_dead():
    assert lock.provably_dead(holder(), holder(pid=1), start_of=lambda pid: "")


def test_a_reused_pid_does_not_keep_a_dead_holder_alive():
    assert lock.provably_dead(holder(), holder(pid=1), start_of=lambda pid: "999")


def test_a_live_holder_on_this_machine_is_not_dead():
    assert not lock.provably_dead(holder(), holder(pid=1), start_of=lambda pid: "777")


def test_a_holder_of_an_earlier_boot_of_this_machine_is_dead():
    assert lock.provably_dead(holder(boot="b0"), holder(pid=1), start_of=lambda pid: "777")


def test_an_unidentified_holder_is_never_dead():
    assert not lock.provably_dead(None, holder(), start_of=lambda pid: "")
    assert not lock.provably_dead(holder(machine=""), holder(machine=""),
                                  start_of=lambda pid: "")
    assert not lock.provably_dead(holder(start=""), holder(pid=1), start_of=lambda pid: "")


# --- the commands, run ------------------------------------------------------------------------

def test_take_writes_the_complete_holder_in_one_step_and_refuses_a_second(target, sh):
    _, _, _, layout = target
    assert sh(lock.take(layout, "first")).returncode == 0
    assert lock_file(layout).read_text() == "first\n"
    second = sh(lock.take(layout, "second"))
    assert second.returncode == lock.BUSY and second.stdout.strip() == "first"
    assert sorted(p.name for p in Path(layout.state).iterdir()) == ["lock"], "no temp left"


def test_take_never_creates_a_lock_without_its_holder(target, sh):
    """The lock appears by link(2) of a complete file: killing the taker at any point leaves
    either no lock or a lock with its holder (never the empty lock of mkdir-then-write)."""
    _, _, _, layout = target
    cmd = lock.take(layout, "x" * 100)
    assert cmd.index("ln -T") > cmd.index("printf")
    assert " mkdir -- " not in cmd and "> " + lock.lock_path(layout) not in cmd


def test_an_old_style_lock_directory_blocks_take_and_names_its_holder(target, sh):
    _, _, _, layout = target
    old = lock_file(layout)
    old.mkdir()
    (old / "holder").write_text("ghost@nowhere pid=1\n")
    second = sh(lock.take(layout, "me"))
    assert second.returncode == lock.BUSY and second.stdout.strip() == "ghost@nowhere pid=1"
    assert not (old / "me").exists()


def test_remove_if_removes_only_the_lock_it_names(target, sh):
    _, _, _, layout = target
    sh(lock.take(layout, "alice pid=10"))
    kept = sh(lock.remove_if(layout, "alice pid=1"))
    assert lock_file(layout).exists() and kept.stdout.strip() == "alice pid=10"
    assert sh(lock.remove_if(layout, "alice pid=10")).returncode == 0
    assert not lock_file(layout).exists()


def test_lock_commands_quote_the_holder(evil_layout, sh, pwned):
    evil = "holder $(touch pwned) `touch pwned` ' \""
    for cmd in (lock.take(evil_layout, evil), lock.take(evil_layout, "second"),
                lock.read(evil_layout), lock.remove_if(evil_layout, evil)):
        sh(cmd)
        assert pwned() == [], cmd
    assert not lock_file(evil_layout).exists()


# --- operations --------------------------------------------------------------------------------

def test_a_second_run_is_refused_naming_the_holder_and_the_lock_is_released(target):
    ex, host, pool, layout = target
    with lock.locked(HostPool(ex, host, pool), "fab deploy --release v1"):
        with pytest.raises(LockError) as info, lock.locked(HostPool(ex, host, pool), "fab restart"):
            pass
        message = str(info.value)
        assert "pool www is locked by another run: `fab deploy --release v1`" in message
        assert f"pid {os.getpid()}" in message and "fab unlock" in message
    assert not lock_file(layout).exists()


def test_the_lock_is_released_when_the_block_fails(target):
    ex, host, pool, layout = target
    with pytest.raises(RuntimeError), lock.locked(HostPool(ex, host, pool), "deploy"):
        raise RuntimeError("boom")
    assert not lock_file(layout).exists()


def test_the_lock_of_a_dead_run_of_this_machine_is_taken_over_and_said(target):
    ex, host, pool, layout = target
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ghost = replace(lock.me("fab deploy --release v1"), pid=dead.pid, start="1")
    ex.run(lock.take(layout, ghost.line()), "plant")
    said: list[str] = []
    with lock.locked(HostPool(ex, host, pool), "fab deploy --release v2", on_stale=said.append):
        assert "cmd=fab deploy --release v2" in lock_file(layout).read_text()
    assert said and "fab deploy --release v1" in said[0]


def test_the_lock_of_a_live_run_of_this_machine_is_not_taken_over(target):
    ex, host, pool, layout = target
    other = lock.me("fab deploy --release v1")  # this very process: alive
    ex.run(lock.take(layout, other.line()), "plant")
    with pytest.raises(LockError), lock.locked(HostPool(ex, host, pool), "fab restart"):
        pass
    assert lock_file(layout).read_text().strip() == other.line()


def test_a_holderless_lock_is_refused_with_a_clear_message(target):
    ex, host, pool, layout = target
    lock_file(layout).mkdir()  # an older fpm-fleet killed between mkdir and the holder write
    with pytest.raises(LockError, match="unknown \\(no holder line was written\\)"), \
            lock.locked(HostPool(ex, host, pool), "fab deploy"):
        pass


class LosesConnectionOnRelease:
    """Wraps a runner: the command that releases the lock fails like a dead connection."""

    def __init__(self, inner):
        self.inner, self.host = inner, inner.host

    def run(self, command, what, *, check=True, timeout=None) -> RemoteResult:
        if what.startswith("release"):
            raise ConnectError(f"{self.host.name}: connection lost during {what}")
        return self.inner.run(command, what, check=check, timeout=timeout)

    def ask(self, cmd):
        return ask_by_running(self, cmd)


def test_an_error_while_releasing_never_hides_the_error_that_ended_the_block(target):
    ex, host, pool, _ = target
    said: list[str] = []
    with pytest.raises(RuntimeError, match="the real cause"), \
            lock.locked(HostPool(LosesConnectionOnRelease(ex), host, pool), "deploy",
                        on_release_error=said.append):
        raise RuntimeError("the real cause")
    assert said and "could not be released" in said[0] and "connection lost" in said[0]


def test_an_error_while_releasing_after_success_is_raised(target):
    ex, host, pool, _ = target
    at = HostPool(LosesConnectionOnRelease(ex), host, pool)
    with pytest.raises(ConnectError), lock.locked(at, "x"):
        pass


def test_unlock_removes_the_lock_it_read_and_says_whose_it_was(target):
    ex, host, pool, layout = target
    assert lock.unlock(HostPool(ex, host, pool)) == "not locked"
    ex.run(lock.take(layout, holder().line()), "plant")
    assert lock.unlock(HostPool(ex, host, pool)) == (
        "removed the lock of `fab deploy --release v2` (pid 4242 of alice@ctl, "
        "since 2026-01-01T00:00:00+0000)")
    assert not lock_file(layout).exists()


def test_unlock_of_an_old_style_lock_directory_removes_it(target):
    ex, host, pool, layout = target
    lock_file(layout).mkdir()
    (lock_file(layout) / "holder").write_text("ghost@nowhere pid=1\n")
    assert lock.unlock(HostPool(ex, host, pool)) == "removed the lock of ghost@nowhere pid=1"
    assert not lock_file(layout).exists()


def test_locked_pools_takes_every_pool_and_releases_all(target, inventory_data, build_fleet,
                                                         tmp_path):
    ex, host, _, _ = target
    inventory_data["pools"]["api"] = {"replicas": 2}
    fleet = build_fleet(inventory_data)
    layouts = [Layout.of(host, p) for p in fleet.pools]
    for lay in layouts:
        Path(lay.state).mkdir(parents=True, exist_ok=True)
    with lock.locked_pools(ex, host, fleet.pools, "fab setup"):
        assert all(lock_file(lay).exists() for lay in layouts)
    assert not any(lock_file(lay).exists() for lay in layouts)
