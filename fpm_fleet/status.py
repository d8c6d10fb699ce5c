"""`fab status`: one row per host / pool / replica, and per-pool drift warnings."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from fpm_fleet.core.errors import FleetError
from fpm_fleet.core.events import Observer
from fpm_fleet.core.inventory import SURGE, Host, Pool
from fpm_fleet.core.selection import Selection
from fpm_fleet.host import fpm
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.releases import origin
from fpm_fleet.remote.command import together
from fpm_fleet.remote.group import HostGroup
from fpm_fleet.remote.runner import Runner
from fpm_fleet.rollout import surge
from fpm_fleet.web import balancer, server

SERVING, STANDBY, PARKED, RETIRING = "serving", "standby", "parked", "retiring"


@dataclass(frozen=True)
class ReplicaStatus:
    host: str
    pool: str
    replica: int | None
    web: str = "apache"  # the web server that balances the pool on this host
    lb_status: str = "?"
    busy: int | None = None
    ping_ok: bool = False
    release: str | None = None
    current_release: str | None = None
    pid: int | None = None
    uptime: int | None = None
    service: str = "-"
    strays: int = 0
    role: str = SERVING  # SERVING, STANDBY (stopped), PARKED (kept running) or RETIRING
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    commit: str | None = None  # of the pinned release, when deploy --ref made it


@dataclass(frozen=True)
class Drift:
    host: str
    pool: str
    message: str


def pool_status(at: HostPool, numbers: list[int]) -> list[ReplicaStatus]:
    current = at.ask(fpm.current_release(at))
    procs, conns = _probe(at, numbers)
    try:
        bal: balancer.Balancer | None = server.read(at)
        bal_error = ""
    except FleetError as exc:
        bal, bal_error = None, str(exc)
    active = _active_slots(at, bal, procs if numbers == list(at.pool.replica_numbers)
                           else at.ask(fpm.probe(at)))
    origins = at.ask(origin.read_all(at.layout))
    rows = [_row(r, procs[r.n], current, bal, bal_error, r.n in active, conns.get(r.n))
            for r in at.replicas(numbers)]
    return [replace(row, commit=origins[row.release].commit)
            if row.release in origins else row for row in rows]


def _probe(at: HostPool, numbers: list[int]) -> tuple[dict[int, fpm.Process], dict[int, int]]:
    """The replicas' masters and the connections open on each replica's socket, in one round
    trip. Neither web server keeps an idle connection to a replica (no fastcgi_keep_conn, no
    enablereuse), so the count is the member's requests in flight or queued. It is the busy
    figure on both: nginx counts no request per member, and Apache's Busy drifts (updated
    without atomics: under load it read 0 with three requests in flight)."""
    procs, conns = at.ask(together(f"probe {at.pool.name} replicas and their connections",
                                   [fpm.probe(at, numbers),
                                    fpm.connections_by_replica(at, numbers)]))
    return procs, conns


def _active_slots(at: HostPool, bal: balancer.Balancer | None,
                  procs: dict[int, fpm.Process]) -> set[int]:
    """The slots expected to serve: every one of a rolling pool; a surge pool's set in
    rotation (its first set when none is)."""
    if at.pool.strategy != SURGE or bal is None:
        return set(at.pool.replica_numbers)
    active, standby = surge.pick_sets(at.pool, surge.serving(at, bal, procs))
    return set(active or standby)


def _row(r: Replica, proc: fpm.Process, current: str | None, bal: balancer.Balancer | None,
         bal_error: str, active: bool, connections: int | None) -> ReplicaStatus:
    member = bal.member(r.member) if bal else None
    master = proc.runs_master(r.at.layout)
    row = ReplicaStatus(r.host.name, r.pool.name, r.n, web=server.name(r.host),
                        current_release=current,
                        lb_status=member.status if member else
                        ("unreachable" if bal is None else "absent"),
                        busy=connections,
                        ping_ok=master and r.ask(fpm.ping(r)),
                        release=proc.release if master else None,
                        pid=proc.pid if master else None,
                        uptime=proc.elapsed if master else None,
                        service=proc.service, strays=proc.strays,
                        role=_role(active, master, member))
    problems = (_problems(row, master, member, bal_error) if active
                else _standby_problems(row, member))
    return replace(row, problems=problems, ok=not problems)


def _role(active: bool, master: bool, member: balancer.Member | None) -> str:
    """Serving; parked (kept running out of rotation, keep_previous); retiring (a surge's
    old set, drained, until the host stops it: rollout/retire.py); standby (stopped)."""
    if active:
        return SERVING
    if not master:
        return STANDBY
    return PARKED if member is None or "Stby" in member.flags else RETIRING


def _standby_problems(row: ReplicaStatus, member: balancer.Member | None) -> list[str]:
    """A standby slot is fine stopped and out of rotation; parked, it must answer and stay
    out (keep_previous parks the previous set running)."""
    problems = []
    if row.strays:
        problems.append(f"{row.strays} workers run outside any live master")
    if row.role == PARKED and not row.ping_ok:
        problems.append("parked but no ping")
    if member is not None and member.enabled and row.role == STANDBY:
        problems.append("in rotation but not running")
    return problems


def _problems(row: ReplicaStatus, master: bool, member: balancer.Member | None,
              bal_error: str) -> list[str]:
    problems = []
    if not master:
        problems.append("not running")
    elif not row.ping_ok:
        problems.append("no ping")
    elif row.release is None:
        problems.append("not pinned to a release (current/ is not its bind mount)")
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
        if row.replica is not None and row.role == SERVING:
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
    return [ReplicaStatus(host.name, p.name, None, web=server.name(host), lb_status="unreachable",
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


def collect(sel: Selection, obs: Observer) -> list[ReplicaStatus]:
    """Every selected replica's row, hosts read 8 at a time; an unreachable host's pools
    are rows that say so."""
    def work(runner: Runner, h: Host) -> list[ReplicaStatus]:
        return [row for p in sel.pools
                for row in pool_status(HostPool(runner, h, p), sel.replicas(p))]

    results = HostGroup(obs, parallel=8, stop_on_failure=False).run(sel.hosts, work)
    hosts = {h.name: h for h in sel.hosts}
    return [row for o in results
            for row in (o.value or [] if o.ok else
                        unreachable(hosts[o.host], sel.pools, str(o.error)))]
