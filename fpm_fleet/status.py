"""`fab status`: one row per host / pool / replica, and per-pool drift warnings."""

from __future__ import annotations

from dataclasses import dataclass, field

from fpm_fleet.errors import FleetError
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.inventory import Host, Pool
from fpm_fleet.remote.ssh import Executor
from fpm_fleet.web import balancer


@dataclass
class ReplicaStatus:
    host: str
    pool: str
    replica: int | None
    lb_status: str = "?"
    busy: int | None = None
    ping_ok: bool = False
    release: str | None = None
    current_release: str | None = None
    pid: int | None = None
    uptime: int | None = None
    service: str = "-"
    strays: int = 0
    ok: bool = False
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Drift:
    host: str
    pool: str
    message: str


def pool_status(ex: Executor, host: Host, pool: Pool, numbers: list[int]) -> list[ReplicaStatus]:
    current = fpm.current_release(ex, host, pool)
    procs = fpm.probe(ex, host, pool, numbers)
    try:
        bal: balancer.Balancer | None = balancer.read(ex, host, pool)
        bal_error = ""
    except FleetError as exc:
        bal, bal_error = None, str(exc)
    rows = []
    layout = Layout.of(host, pool)
    for n in numbers:
        proc = procs[n]
        member = bal.member(pool.member(n)) if bal else None
        row = ReplicaStatus(host.name, pool.name, n, current_release=current)
        row.lb_status = member.status if member else ("unreachable" if bal is None else "absent")
        row.busy = member.busy if member else None
        master = proc.runs_master(layout)
        row.pid = proc.pid if master else None
        row.uptime = proc.elapsed if master else None
        row.release = proc.release if master else None
        row.ping_ok = master and fpm.ping(ex, host, pool, n)
        row.service, row.strays = proc.service, proc.strays
        row.problems = _problems(row, master, member, bal_error)
        row.ok = not row.problems
        rows.append(row)
    return rows


def _problems(row: ReplicaStatus, master: bool, member: balancer.Member | None,
              bal_error: str) -> list[str]:
    problems = []
    if not master:
        problems.append("not running")
    elif not row.ping_ok:
        problems.append("no ping")
    if row.service != "active":
        problems.append(f"service {row.service}")
    if row.strays:
        problems.append(f"{row.strays} workers run outside any live master")
    if bal_error:
        problems.append(bal_error)
    elif member is None:
        problems.append("not a balancer member")
    elif not member.enabled:
        problems.append(f"not in rotation ({member.status})")
    return problems


def drift(rows: list[ReplicaStatus]) -> list[Drift]:
    """Per host and pool: replicas pinning different releases, or not current.release."""
    out = []
    groups: dict[tuple[str, str], list[ReplicaStatus]] = {}
    for row in rows:
        if row.replica is not None:
            groups.setdefault((row.host, row.pool), []).append(row)
    for (host, pool), members in groups.items():
        pinned = {r.release for r in members if r.release}
        current = members[0].current_release
        if len(pinned) > 1:
            out.append(Drift(host, pool, "replicas pin different releases: "
                             + ", ".join(f"{r.pool}-{r.replica}={r.release}" for r in members
                                         if r.release)))
        stale = [r for r in members if r.release and r.release != current]
        if stale:
            out.append(Drift(host, pool, f"current.release is {current} but "
                             + ", ".join(f"{r.pool}-{r.replica} pins {r.release}"
                                         for r in stale) + " (restart to apply)"))
    return out


def unreachable(host: Host, pools: tuple[Pool, ...], error: str) -> list[ReplicaStatus]:
    return [ReplicaStatus(host.name, p.name, None, lb_status="unreachable",
                          problems=[error]) for p in pools]


def how_to_finish(rows: list[ReplicaStatus], drifts: list[Drift]) -> list[str]:
    """After an interruption: the command that completes the job on each host and pool left
    with a replica not serving, or not on current.release (a restart rolls every replica
    onto current.release, health-gated; a rollback goes back instead)."""
    unfinished = {(r.host, r.pool) for r in rows if not r.ok} | {(d.host, d.pool) for d in drifts}
    lines = []
    for host, pool in sorted(unfinished):
        current = next((r.current_release for r in rows
                        if (r.host, r.pool) == (host, pool) and r.current_release), None)
        lines.append(f"{host}/{pool}: current.release is {current or 'unset'}; finish with "
                     f"`fab restart --host {host} --pool {pool}`"
                     + (f" (or go back with `fab rollback --host {host} --pool {pool}`)"
                        if current else ""))
    if not lines:
        lines.append("every selected replica serves its pool's current.release: nothing to "
                     "finish")
    return lines
