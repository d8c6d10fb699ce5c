"""`fab status`: one row per host / pool / replica, and per-pool drift warnings."""

from __future__ import annotations

from dataclasses import dataclass, field

from . import balancer, fpm
from .errors import FleetError
from .inventory import Host, Pool
from .layout import Layout
from .remote import Executor


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
