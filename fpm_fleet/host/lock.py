"""The per-pool lock on a host: who holds it, the remote commands (pure), and `locked`.

The lock is one file, `state/lock`, whose content is its holder. It is created by hard-linking
a temporary file that already holds the whole holder line (`ln -T`, i.e. link(2): it fails if
anything exists there), so a lock never exists without its holder, even when the taker dies
half-way. Releasing compares the content with what we read, then removes, in one command:
we only ever remove the lock we know. A lock is taken over only when its holder is provably
dead: a process of this same control machine (same machine-id) that no longer exists (other
boot, no such pid, or a pid reused by a process that started later).
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from fpm_fleet.core.errors import FleetError, LockError, RemoteError
from fpm_fleet.core.events import Event, Observer
from fpm_fleet.core.inventory import Host, Pool
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.remote.runner import Runner, shielded
from fpm_fleet.remote.shell import q
from fpm_fleet.remote.ssh import session

STALE_NOTE = "remove it with `fab unlock` once you are sure no deploy runs"
BUSY = 9  # exit status of take(): someone holds the lock; its holder line is on stdout


# --- the holder ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Holder:
    """Who holds a lock: operator, control machine and boot, process and its start time."""

    operator: str
    machine: str
    boot: str
    pid: int
    start: str
    since: str
    command: str

    def line(self) -> str:
        return (f"{self.operator} machine={self.machine} boot={self.boot} pid={self.pid} "
                f"start={self.start} since={self.since} cmd={self.command}")

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid} of {self.operator}, since {self.since})"


FIELDS = re.compile(r"(\S+) machine=(\S*) boot=(\S*) pid=(\d+) start=(\S*) since=(\S*) cmd=(.*)")


def parse_holder(text: str) -> Holder | None:
    """A holder line written by `Holder.line`; None for anything else (an older fpm-fleet's
    holder, an empty or damaged file), which is never judged stale."""
    m = FIELDS.fullmatch(text.strip())
    if not m:
        return None
    return Holder(m[1], m[2], m[3], int(m[4]), m[5], m[6], m[7])


def _printable(text: str) -> str:
    """One line of visible characters: a command line with a newline cannot forge a field."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def machine_id() -> str:
    """This control machine: systemd's machine-id, else the boot id (Linux), else ''."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        if value := _read(path):
            return value
    return _read("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), ''
    when there is no such process (or no /proc): tells a live holder from a reused pid."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rpartition(")")[2].split()
    return fields[19] if len(fields) > 19 else ""


def me(command: str) -> Holder:
    pid = os.getpid()
    return Holder(f"{getpass.getuser()}@{socket.gethostname()}", machine_id(), boot_id(), pid,
                  process_start(pid), time.strftime("%Y-%m-%dT%H:%M:%S%z"), _printable(command))


def provably_dead(holder: Holder | None, mine: Holder,
                  start_of: Callable[[int], str] = process_start) -> bool:
    """True only when the holder ran on this very control machine and is gone: that machine
    rebooted since, or its pid is free, or reused by a process that started at another time.
    A holder on another machine, or one we cannot identify, is never judged dead."""
    if holder is None or not holder.machine or holder.machine != mine.machine:
        return False
    if holder.boot and mine.boot and holder.boot != mine.boot:
        return True
    if holder.boot != mine.boot or not holder.start:
        return False
    return start_of(holder.pid) != holder.start


# --- remote commands (pure) ------------------------------------------------------------------

def lock_path(layout: Layout) -> str:
    return str(layout.state / "lock")


def _read_holder(lock: str) -> str:
    """The holder line; a directory is the lock of an fpm-fleet before 0.2 (lock/holder)."""
    return (f"if [ -d {lock} ]; then cat -- {lock}/holder 2>/dev/null; "
            f"else cat -- {lock} 2>/dev/null; fi")


def take(layout: Layout, holder: str) -> str:
    """Write the holder to a private temp file, then link(2) it as the lock: test-and-set of
    a complete lock. On failure print the current holder and exit BUSY."""
    lock = q(lock_path(layout))
    return (f"mkdir -p -- {q(layout.state)} && tmp=$(mktemp -- {lock}.XXXXXXXX) && "
            f"printf '%s\\n' {q(holder)} > \"$tmp\" && "
            f"if ln -T -- \"$tmp\" {lock} 2>/dev/null; then rm -f -- \"$tmp\"; else "
            f"rm -f -- \"$tmp\"; {_read_holder(lock)} || true; exit {BUSY}; fi")


def remove_if(layout: Layout, holder: str) -> str:
    """Remove the lock only if its holder is still `holder` (compare, then remove, in one
    command); print the holder found otherwise, so the caller can say who holds it now."""
    lock = q(lock_path(layout))
    return (f"h=$({_read_holder(lock)}); if [ \"$h\" = {q(holder)} ]; then "
            f"rm -rf -- {lock}; else printf '%s\\n' \"$h\"; fi")


def read(layout: Layout) -> str:
    """The holder line, or `-` when the pool is not locked."""
    lock = q(lock_path(layout))
    return f"if [ -e {lock} ]; then {_read_holder(lock)}; echo; else echo -; fi"


# --- operations ------------------------------------------------------------------------------

def who(found: str) -> str:
    """A holder line as the operator reads it."""
    holder = parse_holder(found)
    return holder.describe() if holder else (found or "unknown (no holder line was written)")


def _refusal(host: Host, pool: Pool, found: str) -> LockError:
    return LockError(f"{host.name}: pool {pool.name} is locked by another run: {who(found)}; "
                     f"{STALE_NOTE}")


def acquire(at: HostPool, mine: Holder, on_stale: Callable[[str], None] | None = None
            ) -> None:
    """Take the lock, or take over the lock of a provably dead run of this machine."""
    runner, host, pool, layout = at.runner, at.host, at.pool, at.layout
    for _ in range(2):
        result = runner.run(take(layout, mine.line()), f"take the {pool.name} lock", check=False)
        if result.ok:
            return
        if result.exited != BUSY:
            raise RemoteError(host.name, f"take the {pool.name} lock", result)
        found = result.stdout.strip()
        if not provably_dead(parse_holder(found), mine):
            raise _refusal(host, pool, found)
        runner.run(remove_if(layout, found), f"remove the {pool.name} lock of a dead run")
        if on_stale:
            on_stale(who(found))
    raise _refusal(host, pool, found)


@contextmanager
def locked(at: HostPool, command: str,
           on_stale: Callable[[str], None] | None = None,
           on_release_error: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the pool's lock on this host; released on every exit path.

    A failure to release (the connection died with the error that ends the block) never
    replaces the error in flight: it is reported through on_release_error instead.
    """
    runner, host, pool = at.runner, at.host, at.pool
    mine = me(command)
    acquire(at, mine, on_stale)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        release = remove_if(at.layout, mine.line())
        try:
            with shielded(runner):
                runner.run(release, f"release the {pool.name} lock")
        except FleetError as exc:
            if not failed:
                raise
            _release_again(host, pool, release, exc, on_release_error)


def _release_again(host: Host, pool: Pool, release: str, first: FleetError,
                   on_release_error: Callable[[str], None] | None) -> None:
    """The block ended with an error (an interrupt, a lost connection) that may have left the
    session unusable: try once more on a connection of its own before giving up."""
    try:
        with session(host) as fresh:
            fresh.run(release, f"release the {pool.name} lock (new connection)")
    except FleetError:
        if on_release_error:
            on_release_error(f"the {pool.name} lock could not be released: {first}")


@contextmanager
def locked_pools(runner: Runner, host: Host, pools: Sequence[Pool], command: str,
                 on_stale: Callable[[str], None] | None = None,
                 on_release_error: Callable[[str], None] | None = None) -> Iterator[None]:
    """Every pool's lock, taken in inventory order (so two runs never wait on each other)."""
    with ExitStack() as stack:
        for pool in pools:
            stack.enter_context(locked(HostPool(runner, host, pool), command, on_stale,
                                       on_release_error))
        yield


def reporters(obs: Observer, host: str, target: str
              ) -> tuple[Callable[[str], None], Callable[[str], None]]:
    """What `locked` says along the way: a takeover, a lock it could not release."""
    def stale(holder: str) -> None:
        obs.event(Event("warn", host, "lock", target,
                        f"took over the lock of a killed run: {holder}"))

    def unreleased(problem: str) -> None:
        obs.event(Event("warn", host, "unlock", target, problem))

    return stale, unreleased


def unlock(at: HostPool) -> str:
    """Remove the lock we read (not one taken since); say whose it was."""
    runner, host, pool, layout = at.runner, at.host, at.pool, at.layout
    found = runner.run(read(layout), f"read the {pool.name} lock").stdout.strip()
    if found == "-":
        return "not locked"
    now = runner.run(remove_if(layout, found), f"remove the {pool.name} lock").stdout.strip()
    if now:
        raise LockError(f"{host.name}: pool {pool.name} was locked again meanwhile, by {now}; "
                        "left in place")
    return f"removed the lock of {who(found)}"
