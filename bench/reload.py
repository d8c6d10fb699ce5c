"""The usual alternative to a rolling restart: `kill -USR2` to every PHP-FPM master at once.

On USR2 PHP-FPM stops its workers (SIGQUIT, then SIGTERM after process_control_timeout)
and re-executes itself. Under systemd (`--nodaemonize`, Type=notify) the new master keeps
the same pid and stays in the service's mount namespace (so on its pinned release): the
pid cannot tell the reload is over. The status page can: its `start time` is the new
master's. The reload is over when every replica's status page answers with a new one.

Each host has its own PID namespace, so the masters are found, signalled and watched
inside their host (nsenter), all hosts at once, one thread per host.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fpm_fleet.core.inventory import Fleet, Host, Pool
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote import shell
from fpm_fleet.sandbox.hosts import SandboxHost

from .errors import BenchError
from .sandbox import in_host, sandbox_host

POLL_S = 0.02


@dataclass(frozen=True)
class Master:
    """One replica's PHP-FPM master, as its host sees it, before the reload."""

    name: str
    pid: int
    started: int
    status_request: str


@dataclass(frozen=True)
class HostMasters:
    box: SandboxHost
    masters: tuple[Master, ...]


@dataclass(frozen=True)
class Reload:
    replicas: int
    seconds: float
    complete: bool

    @property
    def detail(self) -> str:
        state = "all" if self.complete else "NOT all"
        return (f"{self.replicas} masters signalled; {state} status pages show a new start "
                f"time after {self.seconds:.2f}s")


def start_time(fcgi_output: str) -> int | None:
    """`start time` from a replica's `status?json` answer (cgi-fcgi output); None when the
    status page did not answer (a master between its old and new self)."""
    resp = fpm.parse_fcgi(fcgi_output)
    if resp.status != 200:
        return None
    try:
        return int(json.loads(resp.body)["start time"])
    except (ValueError, KeyError, TypeError):
        return None


def status_request(host: Host, pool: Pool, n: int) -> str:
    layout = Layout.of(host, pool)
    return fpm.fcgi_command(layout.status_sock(n), pool.status_path, pool.status_path,
                              query="json", timeout=10)


def signal_command(pids: list[int]) -> str:
    return shell.join(["kill", "-USR2", *pids])


def masters_of(host: Host, pool: Pool) -> tuple[SandboxHost, list[Master]]:
    """The pool's live masters on `host` (pids of the host's own PID namespace), each
    checked to be that replica's php-fpm master, with its status page's start time."""
    box, layout = sandbox_host(host), Layout.of(host, pool)
    numbers = list(pool.replica_numbers)
    probed = fpm.parse_probe(in_host(box, fpm.probe_command(layout, numbers)))
    found = []
    for n in numbers:
        proc = probed.get(n)
        if proc is None or proc.pid is None or not proc.runs_master(layout):
            raise BenchError(f"{host.name}: {pool.member(n)} has no running PHP-FPM master "
                             "to reload")
        request = status_request(host, pool, n)
        started = start_time(in_host(box, request, timeout=15))
        if started is None:
            raise BenchError(f"{host.name}: {pool.member(n)}: status page does not answer")
        found.append(Master(f"{host.name} {pool.member(n)}", proc.pid, started, request))
    return box, found


def masters(fleet: Fleet) -> list[HostMasters]:
    """Every replica master of the fleet, grouped by host. Waits, if needed, until the
    newest of them is more than a second old: `start time` counts whole seconds."""
    groups: dict[str, HostMasters] = {}
    for host in fleet.hosts:
        for pool in fleet.pools:
            box, found = masters_of(host, pool)
            before = groups.get(host.name, HostMasters(box, ())).masters
            groups[host.name] = HostMasters(box, (*before, *found))
    newest = max(m.started for g in groups.values() for m in g.masters)
    time.sleep(max(0.0, newest + 1.05 - time.time()))
    return list(groups.values())


def reload_all(groups: list[HostMasters], timeout: float = 30) -> Reload:
    """USR2 to every master of every host at the same moment (one thread per host), then
    wait until every status page names a new start time."""
    barrier = threading.Barrier(len(groups))
    started = time.monotonic()
    with ThreadPoolExecutor(len(groups)) as workers:
        done = list(workers.map(lambda g: _reload_host(g, barrier, started + timeout), groups))
    replicas = sum(len(g.masters) for g in groups)
    if any(t is None for t in done):
        return Reload(replicas, round(time.monotonic() - started, 2), False)
    return Reload(replicas, round(max(t for t in done if t is not None) - started, 2), True)


def _reload_host(group: HostMasters, barrier: threading.Barrier, deadline: float
                 ) -> float | None:
    """Signal this host's masters, poll their status pages; when all were new (monotonic
    time), or None at the deadline."""
    barrier.wait()
    in_host(group.box, signal_command([m.pid for m in group.masters]))
    pending = list(group.masters)
    while pending and time.monotonic() < deadline:
        pending = [m for m in pending if _same_master(group.box, m)]
        if pending:
            time.sleep(POLL_S)
    return None if pending else time.monotonic()


def _same_master(box: SandboxHost, master: Master) -> bool:
    """True until the replica's status page answers with another start time."""
    proc_out = in_host(box, master.status_request + " || true", timeout=15)
    new = start_time(proc_out)
    return new is None or new == master.started
