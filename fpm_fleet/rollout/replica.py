"""The steps of one replica restart (ARCHITECTURE.md, "Restart steps"), each a short
named function that returns what it found or did.

guard -> drain -> wait idle -> stop -> start pinned -> health gate -> enable.
If a step fails the replica stays out of rotation (or is put back when it was never
stopped), the other replicas keep serving, and a RolloutError says what happened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fpm_fleet.core.errors import RemoteError, RemoteResult, RolloutError
from fpm_fleet.core.events import Event, Observer, step
from fpm_fleet.host import fpm
from fpm_fleet.host.fpm import Process, StopOutcome, Stopped
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote.command import Command, together
from fpm_fleet.web import balancer, server
from fpm_fleet.web.balancer import Balancer

POLL = 0.1
T = TypeVar("T")


def assuming(cmd: Command[T], value: T) -> Command[T]:
    """`cmd`, answered `value` in a dry run: what a check expects once the step before it
    (which a dry run only records) took effect."""
    return replace(cmd, assume=lambda: value)


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


GUARD_READS = 5
GUARD_WAIT = 0.2


def guard(r: Replica) -> Replica:
    """Refuse unless another replica of the pool is in rotation and answers ping; returns
    the one that keeps serving.

    Before refusing it reads again, a few times 0.2 s apart: a replica enabled a moment
    ago can still read as out (seen once on nginx right after the reload that enabled it),
    and refusing fails the host. Only a refusal waits; going ahead needs a fresh yes.
    """
    for attempt in range(GUARD_READS):
        if attempt:
            time.sleep(GUARD_WAIT)
        other = _serving_other(r)
        if other is not None:
            return other
    raise RolloutError(f"{r.host.name}: refusing to take {r.name} out: no other replica of "
                       f"pool {r.pool.name} is enabled and healthy")


def _serving_other(r: Replica) -> Replica | None:
    """Another replica of the pool in rotation that answers ping, if any.

    A member in `Err` counts only once its retry interval has passed (Apache then tries it
    again); taking the last other member out inside that window would answer 503.
    """
    bal = server.read(r.at)
    for other in r.at.replicas():
        if other.n == r.n:
            continue
        member = balancer.member_of(bal, other)
        if member.out or not other.ask(fpm.ping(other)):
            continue
        if "Err" in member.flags:
            time.sleep(r.pool.retry + 0.5)
            if server.member(other).out:
                continue
        return other
    return None


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


IDLE = Activity(0, None, 0)


def activity(r: Replica) -> Command[Activity]:
    """Busy, FPM status and open connections, in one round trip."""
    both = together(f"idle probe {r.name}",
                    [server.read_command(r.at), fpm.fpm_status(r), fpm.connections(r)])

    def read(result: RemoteResult) -> Activity:
        bal, status, conns = both.read(result)
        member = balancer.member_of(bal, r)
        return Activity(member.busy, status, conns, member.out)

    return Command(both.text, both.what, read, check=False, assume=lambda: IDLE)


STALE_BUSY_GRACE = 1.0


def wait_idle(r: Replica, timeout: float) -> tuple[float, str]:
    """Wait until the replica has no request in flight. Returns (seconds waited, note).

    Idle means Busy = 0 and FPM shows no active process and an empty queue, twice in a row.
    Busy is not fully trustworthy (non-atomic in Apache 2.4, it can stay stuck above 0), so
    when FPM itself has been idle, with no new connection accepted, for STALE_BUSY_GRACE
    seconds after the drain, the replica is idle whatever Busy says (and the note says so).
    """
    started = time.monotonic()
    quiet, idle_since, accepted = 0, None, None
    while True:
        act = r.ask(activity(r))
        if not act.out:
            # Apache lost the drain flag meanwhile (a restart or graceful that did not keep
            # it): new requests reach the replica again, so it would never become idle
            if time.monotonic() - started > timeout:
                raise RolloutError(f"{r.host.name}: {r.name}: the balancer keeps losing its "
                                   "drain flag")
            server.drain(r)
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


def wait_unused(at: HostPool, replicas: list[Replica], timeout: float) -> None:
    """Wait, on the host and in one round trip, until no connection is open on any of the
    replicas' sockets (out of rotation already): two readings 0.1 s apart per socket, as
    the host's retire job does (a request Apache routed just before a drain connects a
    moment later). RolloutError when one is still in use after `timeout`."""
    ticks = max(1, int(timeout * 10))

    def read(res: RemoteResult) -> list[int]:
        found = fpm.parse_counts(res.stdout)
        if sorted(found) != list(range(len(replicas))):
            raise ValueError(f"expected one count per socket, got {res.stdout!r}")
        return [found[i] for i in range(len(replicas))]

    names = ", ".join(r.name for r in replicas)
    # the sockets are waited on side by side: the longest wait bounds the command
    waited = at.ask(Command(fpm.unused_command([r.sock for r in replicas], ticks),
                            f"wait until {names} are unused", read, timeout=timeout + 10,
                            assume=lambda: [0] * len(replicas)))
    busy = [r.name for r, w in zip(replicas, waited, strict=True) if w >= ticks]
    if busy:
        raise RolloutError(f"{at.host.name}: {', '.join(busy)} still in use after "
                           f"{timeout:g}s out of rotation")


def gates(replicas: list[Replica], release: str,
          pinned: dict[int, str | None] | None = None) -> Command[dict[int, Gate]]:
    """Ping, the app's health script and the pinned release of every replica, over each
    replica's own socket, in one round trip (a dry run assumes they came up as intended).
    `pinned`: each replica's pinned release as already read under the same lock (a parked
    set's by the preflight's probe, a started set's by the start): the host is not probed
    again."""
    at = replicas[0].at
    parts: list[Command[Any]] = [] if pinned is not None else [
        fpm.probe(at, [r.n for r in replicas])]
    for r in replicas:
        parts += [fpm.health(r), fpm.ping(r)]
    # each replica answers on its own socket: asked side by side
    both = together(f"gate {','.join(r.name for r in replicas)}", parts, at_once_from=0)

    def read(result: RemoteResult) -> dict[int, Gate]:
        answers = list(both.read(result))
        pins = pinned if pinned is not None else _pins(at, answers.pop(0))
        found = {}
        for i, r in enumerate(replicas):
            resp, ping = answers[2 * i], answers[2 * i + 1]
            found[r.n] = Gate(ping=ping, health=resp.status if resp else None,
                              release=pins.get(r.n))
        return found

    return Command(both.text, both.what, read, check=False,
                   assume=lambda: {r.n: Gate(True, 200, release) for r in replicas})


def _pins(at: HostPool, procs: dict[int, Process]) -> dict[int, str | None]:
    """The release each replica's live master is pinned to (None: no live master)."""
    return {n: p.release if p.runs_master(at.layout) else None for n, p in procs.items()}


def gate_once(r: Replica, release: str) -> Gate:
    return r.ask(gates([r], release))[r.n]


def health_gate(r: Replica, release: str, attempts: int = 20) -> Gate:
    """The gate, tried until it passes or cannot pass any more."""
    return health_gate_set([r], release, attempts)[r.n]


def health_gate_set(replicas: list[Replica], release: str, attempts: int = 20,
                    pinned: dict[int, str | None] | None = None) -> dict[int, Gate]:
    """Every replica's gate, one round trip per try, tried until all pass or one cannot
    pass any more (it is up and answers, on `release`: a failing health script will not
    heal); the error names the first replica that failed. `pinned`: see `gates`."""
    passed: dict[int, Gate] = {}
    pending = list(replicas)
    found: dict[int, Gate] = {}
    for _ in range(attempts):
        found = pending[0].ask(gates(pending, release, pinned))
        passed |= {n: g for n, g in found.items() if not g.problems(release)}
        pending = [r for r in pending if r.n not in passed]
        if not pending or any(found[r.n].ping and found[r.n].release == release
                              for r in pending):
            break
        time.sleep(0.1)
    if not pending:
        return passed
    failed = next((r for r in pending if found[r.n].ping and found[r.n].release == release),
                  pending[0])
    raise RolloutError(f"{failed.host.name}: {failed.name} failed its health gate on {release}: "
                       + "; ".join(found[failed.n].problems(release))
                       + " (left out of rotation)")


def take_out(r: Replica, obs: Observer, timeout: float, check: bool = True) -> float:
    """Guard (unless forced), drain, wait until idle; returns the seconds waited.

    If it never becomes idle, the replica was not stopped, so it is put back in rotation.
    """
    host, target = r.host.name, r.name
    if check:
        with step(obs, host, "guard", target) as s:
            s.detail = f"{guard(r).name} keeps serving"
    for _ in range(3):
        with step(obs, host, "drain", target) as s:
            s.detail = server.drain(r).status
        with step(obs, host, "wait idle", target) as s:
            try:
                waited, note = wait_idle(r, timeout)
                s.detail = f"{waited:.2f}s" + (f" ({note})" if note else "")
            except RolloutError:
                server.enable(r)
                raise
        if still_out(r):
            return waited
        obs.event(Event("warn", host, "drain", target, "the balancer forgot the drain "
                        "(Apache restarted?): draining again"))
    raise RolloutError(f"{host}: {r.name}: the balancer keeps losing its drain flag")


def still_out(r: Replica) -> bool:
    """Re-read the member just before stopping: an Apache restart may have reset its flags."""
    bal = r.ask(assuming(server.read_command(r.at), _drained(r)))
    return balancer.member_of(bal, r).out


def _drained(r: Replica) -> Balancer:
    """The balancer a dry run assumes once r was drained: r alone, out."""
    member = balancer.Member(r.member, frozenset({"Drn", "Ok"}), 0)
    return Balancer(r.pool.balancer, "", (member,))


def restart(r: Replica, release: str, obs: Observer, timeout: float) -> None:
    """The whole zero-downtime sequence for one replica."""
    take_out(r, obs, timeout)
    stop(r, obs)
    start(r, release, obs)


def stop(r: Replica, obs: Observer) -> Stopped:
    with step(obs, r.host.name, "stop", r.name) as s:
        try:
            stopped = r.ask(fpm.stop(r))
        except RemoteError as exc:
            raise RolloutError(f"{r.host.name}: {r.name} could not be stopped: {exc}") from None
        s.detail = str(stopped)
        if stopped.outcome is StopOutcome.ESCALATED:
            s.detail = (f"did not exit within {r.pool.stop_timeout}s after SIGQUIT "
                        "(stop_timeout): systemd sent SIGKILL")
    return stopped


def start(r: Replica, release: str, obs: Observer) -> Gate:
    """Start pinned to `release`, health-gate it, then enable it in the balancer."""
    with step(obs, r.host.name, "start", r.name) as s:
        try:
            r.ask(fpm.start(r, release))
        except RemoteError as exc:
            raise RolloutError(f"{r.host.name}: {r.name} did not start: {exc}") from None
        s.detail = f"pinned {release}"
    with step(obs, r.host.name, "health", r.name):
        try:
            gate = health_gate(r, release)
        except RolloutError:
            server.disable(r)
            raise
    with step(obs, r.host.name, "enable", r.name) as s:
        member, note = server.enable(r)
        s.detail = member.status + (f" ({note})" if note else "")
    return gate


SETTLING = ("activating", "deactivating", "reloading")
SETTLE_WAIT = 10.0


def settled_master(r: Replica, wait: float = SETTLE_WAIT) -> Process | None:
    """The replica's master once its service is neither starting nor stopping: an interrupt
    cuts the connection, not a `systemctl start` that systemd already runs."""
    deadline = time.monotonic() + wait
    while True:
        proc = r.ask(fpm.probe(r.at, [r.n]))[r.n]
        if proc.service not in SETTLING or time.monotonic() > deadline:
            return proc if proc.runs_master(r.at.layout) else None
        time.sleep(POLL)


def _start_again(r: Replica) -> Process | None:
    target = r.ask(fpm.current_release(r.at))
    if not target:
        return None
    try:
        r.ask(fpm.start(r, target))
    except RemoteError:
        return None  # the unit's own log says why; the replica stays out
    return settled_master(r)


def recover(r: Replica, start_stopped: bool = False) -> str:
    """After an interruption: put the replica back if it runs and is healthy; say its state.

    With `start_stopped` (the replica in hand of a restart, a start or a deploy, which was
    meant to run: an interrupt between its stop and its start would leave the pool a replica
    short), a stopped replica is started on what current.release names first."""
    proc = settled_master(r)
    if proc is None and start_stopped:
        proc = _start_again(r)
    if proc is None:
        return "stopped, out of rotation"
    release = proc.release or ""
    try:
        health_gate(r, release, attempts=3)
    except RolloutError as exc:
        return f"running but unhealthy, out of rotation ({exc})"
    member, _ = server.enable(r)
    return f"running {release}, {member.status}"
