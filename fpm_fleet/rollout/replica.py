"""The steps of one replica restart (DESIGN.md section 2), each a short named function.

guard -> drain -> wait idle -> stop -> start pinned -> health gate -> enable.
If a step fails the replica stays out of rotation (or is put back when it was never
stopped), the other replicas keep serving, and a RolloutError says what happened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from fpm_fleet.errors import AnswerError, RolloutError
from fpm_fleet.events import Event, Observer, step
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.inventory import Host, Pool
from fpm_fleet.remote import shell
from fpm_fleet.remote.ssh import Executor
from fpm_fleet.web import balancer

POLL = 0.1


@dataclass(frozen=True)
class Replica:
    """One PHP-FPM master of a pool on a host, as the operator names it: web1/www-2."""

    host: Host
    pool: Pool
    n: int

    @property
    def name(self) -> str:
        return f"{self.pool.name}-{self.n}"

    @property
    def label(self) -> str:
        return f"{self.host.name}/{self.name}"

    @property
    def layout(self) -> Layout:
        return Layout.of(self.host, self.pool)


@dataclass(frozen=True)
class Gate:
    """The outcome of a health gate."""

    ping: bool
    health: int | None
    release: str | None

    def problems(self, intended: str) -> list[str]:
        out = []
        if not self.ping:
            out.append("FPM ping did not answer pong")
        if self.health != 200:
            out.append(f"health check answered {self.health or 'nothing'} (want 200)")
        if self.release != intended:
            out.append(f"pinned release is {self.release or 'none'} (want {intended})")
        return out


def guard(ex: Executor, r: Replica) -> None:
    """Refuse unless another replica of the pool is in rotation and answers ping.

    A member in `Err` counts only once its retry interval has passed (Apache then tries it
    again); taking the last other member out inside that window would answer 503.
    """
    bal = balancer.read(ex, r.host, r.pool)
    for n in r.pool.replica_numbers:
        if n == r.n:
            continue
        member = balancer.member_of(bal, r.host, r.pool, n)
        if member.out or not fpm.ping(ex, r.host, r.pool, n):
            continue
        if "Err" in member.flags:
            time.sleep(r.pool.retry + 0.5)
            member = balancer.member_of(balancer.read(ex, r.host, r.pool), r.host, r.pool, n)
            if member.out:
                continue
        return
    raise RolloutError(f"{r.host.name}: refusing to take {r.name} out: no other replica of "
                       f"pool {r.pool.name} is enabled and healthy")


@dataclass(frozen=True)
class Activity:
    """What says a replica still has work: Apache's Busy, FPM's status (None when it does not
    answer) and the connections open on its socket (the kernel's count)."""

    busy: int
    status: fpm.FpmStatus | None
    connections: int
    out: bool = True

    @property
    def fpm_idle(self) -> bool:
        quiet = self.status is None or (self.status.active == 0
                                        and self.status.listen_queue == 0)
        return quiet and self.connections == 0


def idle_probe(ex: Executor, r: Replica) -> Activity:
    """Busy, FPM status and open connections, in one round trip."""
    layout = r.layout
    cmd = shell.sections([
        ("bm", shell.balancer_xml(r.host.manager_url(r.pool))),
        ("fpm", shell.fcgi_request(layout.status_sock(r.n), r.pool.status_path,
                                   r.pool.status_path, "json")),
        ("conns", shell.open_connections(layout.sock(r.n))),
    ])
    out = shell.split_sections(ex.run(cmd, f"idle probe {r.name}", check=False).stdout)
    bal = balancer.pick(r.host, r.pool, out.get("bm", ""))
    member = balancer.member_of(bal, r.host, r.pool, r.n)
    resp = fpm.parse_fcgi(out.get("fpm", ""))
    try:
        status = fpm.parse_status(resp.body) if resp.status == 200 else None
    except ValueError as exc:
        raise AnswerError(f"{r.host.name}: {r.name}: {exc}") from None
    conns = out.get("conns", "").strip()
    return Activity(member.busy, status, int(conns) if conns.isdigit() else 0, member.out)


STALE_BUSY_GRACE = 1.0


def wait_idle(ex: Executor, r: Replica, timeout: float) -> tuple[float, str]:
    """Wait until the replica has no request in flight. Returns (seconds waited, note).

    Idle means Busy = 0 and FPM shows no active process and an empty queue, twice in a row.
    Busy is not fully trustworthy (non-atomic in Apache 2.4, it can stay stuck above 0), so
    when FPM itself has been idle, with no new connection accepted, for STALE_BUSY_GRACE
    seconds after the drain, the replica is idle whatever Busy says (and the note says so).
    """
    started = time.monotonic()
    quiet, idle_since, accepted = 0, None, None
    while True:
        act = idle_probe(ex, r)
        if not act.out:
            # Apache lost the drain flag meanwhile (a restart or graceful that did not keep
            # it): new requests reach the replica again, so it would never become idle
            if time.monotonic() - started > timeout:
                raise RolloutError(f"{r.host.name}: {r.name}: the balancer keeps losing its "
                                   "drain flag")
            balancer.drain(ex, r.host, r.pool, r.n)
            quiet, idle_since = 0, None
            continue
        now = time.monotonic()
        status = act.status
        same_conns = status is None or accepted is None or status.accepted == accepted
        idle_since = (idle_since or now) if act.fpm_idle and same_conns else None
        accepted = status.accepted if status else None
        quiet = quiet + 1 if act.fpm_idle and act.busy == 0 else 0
        if quiet >= 2:
            return now - started, "" if status else "no FPM status answer: master gone?"
        if idle_since is not None and now - idle_since >= STALE_BUSY_GRACE:
            return now - started, (f"Busy={act.busy} is stale: FPM idle for "
                                   f"{STALE_BUSY_GRACE:g}s")
        if now - started > timeout:
            active = status.active if status else "?"
            raise RolloutError(f"{r.host.name}: {r.name} still busy after {timeout:g}s "
                               f"(Busy={act.busy}, active={active}, "
                               f"connections={act.connections})")
        time.sleep(POLL)


def health_gate(ex: Executor, r: Replica, release: str, attempts: int = 20) -> Gate:
    """Ping, the app's health script and the pinned release, over the replica's own socket."""
    gate = Gate(False, None, None)
    for _ in range(attempts):
        proc = fpm.probe(ex, r.host, r.pool, [r.n])[r.n]
        resp = fpm.health(ex, r.host, r.pool, r.n)
        gate = Gate(ping=fpm.ping(ex, r.host, r.pool, r.n),
                    health=resp.status if resp else None, release=proc.release)
        if not gate.problems(release):
            return gate
        if gate.ping and gate.release == release:
            break  # the replica is up and answers: a failing health script will not heal
        time.sleep(0.1)
    raise RolloutError(f"{r.host.name}: {r.name} failed its health gate on {release}: "
                       + "; ".join(gate.problems(release)) + " (left out of rotation)")


def take_out(ex: Executor, r: Replica, obs: Observer, timeout: float, check: bool = True) -> None:
    """Guard (unless forced), disable in the balancer, wait until idle.

    If it never becomes idle, the replica was not stopped, so it is put back in rotation.
    """
    host, target = r.host.name, r.name
    if check:
        with step(obs, host, "guard", target):
            guard(ex, r)
    for _ in range(3):
        with step(obs, host, "drain", target) as s:
            s.detail = balancer.drain(ex, r.host, r.pool, r.n).status
        with step(obs, host, "wait idle", target) as s:
            try:
                waited, note = wait_idle(ex, r, timeout)
                s.detail = f"{waited:.2f}s" + (f" ({note})" if note else "")
            except RolloutError:
                balancer.enable(ex, r.host, r.pool, r.n)
                raise
        if still_out(ex, r):
            return
        obs.event(Event("warn", host, "drain", target, "the balancer forgot the drain "
                        "(Apache restarted?): draining again"))
    raise RolloutError(f"{host}: {r.name}: the balancer keeps losing its drain flag")


def still_out(ex: Executor, r: Replica) -> bool:
    """Re-read the member just before stopping: an Apache restart may have reset its flags."""
    return balancer.member_of(balancer.read(ex, r.host, r.pool), r.host, r.pool, r.n).out


def restart(ex: Executor, r: Replica, release: str, obs: Observer, timeout: float) -> None:
    """The whole zero-downtime sequence for one replica."""
    take_out(ex, r, obs, timeout)
    stop(ex, r, obs, timeout)
    start(ex, r, release, obs)


def stop(ex: Executor, r: Replica, obs: Observer, timeout: float) -> str:
    with step(obs, r.host.name, "stop", r.name) as s:
        outcome = fpm.stop(ex, r.host, r.pool, r.n)
        s.detail = outcome
        if outcome == "escalated":
            s.detail = (f"did not exit within {r.pool.stop_timeout}s after SIGQUIT "
                        "(stop_timeout): systemd sent SIGKILL")
    return outcome


def start(ex: Executor, r: Replica, release: str, obs: Observer) -> None:
    """Start pinned to `release`, health-gate it, then enable it in the balancer."""
    with step(obs, r.host.name, "start", r.name) as s:
        fpm.start(ex, r.host, r.pool, r.n, release)
        s.detail = f"pinned {release}"
    with step(obs, r.host.name, "health", r.name):
        try:
            health_gate(ex, r, release)
        except RolloutError:
            balancer.disable(ex, r.host, r.pool, r.n)
            raise
    with step(obs, r.host.name, "enable", r.name) as s:
        member, note = balancer.enable(ex, r.host, r.pool, r.n)
        s.detail = member.status + (f" ({note})" if note else "")


def recover(ex: Executor, r: Replica) -> str:
    """After an interruption: put the replica back if it runs and is healthy; say its state."""
    proc = fpm.running_master(ex, r.host, r.pool, r.n)
    if proc is None:
        return "stopped, out of rotation"
    release = proc.release or ""
    try:
        health_gate(ex, r, release, attempts=3)
    except RolloutError as exc:
        return f"running but unhealthy, out of rotation ({exc})"
    member, _ = balancer.enable(ex, r.host, r.pool, r.n)
    return f"running {release}, {member.status}"
