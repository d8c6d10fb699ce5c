"""The surge strategy (ARCHITECTURE.md, "Surge rollouts"): a pool has two sets of replica
slots on each host; a rollout starts the whole standby set at once on the new release,
gates every new replica, puts the set in rotation, then drains the old set at once, waits
once for its longest request and stops it (or parks it, with keep_previous).

Serving capacity never drops below `replicas`: the old set leaves rotation only once the
new one serves. A new replica failing its gate takes the new set away; the old one never
left rotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fpm_fleet.core.errors import AnswerError, FleetError, RolloutError
from fpm_fleet.core.events import Event, Observer, step
from fpm_fleet.core.inventory import Pool
from fpm_fleet.host import fpm
from fpm_fleet.host.fpm import Process
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote.command import together
from fpm_fleet.remote.group import as_failure
from fpm_fleet.remote.runner import shielded
from fpm_fleet.rollout import replica, retire
from fpm_fleet.web import balancer, server
from fpm_fleet.web.balancer import Balancer

# The balancer and the replicas as read on the host, in one round trip.
Reading = tuple[Balancer, dict[int, Process]]


def pick_sets(pool: Pool, serving: set[int]) -> tuple[list[int], list[int]]:
    """(the set in rotation, the set a new release starts in), by slot number (pure). The
    set with more serving members is the one in rotation; with none, there is none."""
    sets = [list(s) for s in pool.sets]
    counts = [len(serving & set(s)) for s in sets]
    if not any(counts):
        return [], sets[0]
    active = counts.index(max(counts))
    return sets[active], sets[1 - active]


def runs(proc: Process, at: HostPool, release: str) -> bool:
    """Replica's master is alive and pinned to `release` (not a deleted copy of it)."""
    return (proc.runs_master(at.layout) and proc.release == release
            and not proc.release_deleted)


def _names(replicas: list[Replica]) -> str:
    return ",".join(r.name for r in replicas)


def surge_to(at: HostPool, release: str, obs: Observer, timeout: float,
             proven: Callable[[], None] | None = None, force: bool = False,
             seen: Reading | None = None) -> list[str]:
    """Serve `release` from this host's standby set and leave the old set to retire; returns
    the replicas now serving (none when the pool already served `release` and not `force`).
    `seen`: the balancer and replicas as the preflight read them under the same lock, when
    nothing changed them since (else they are read here)."""
    bal, procs = seen or at.ask(together(f"read {at.pool.name} balancer and replicas",
                                         [server.read_command(at), fpm.probe(at)],
                                         at_once_from=0))
    old_ns, new_ns = pick_sets(at.pool, serving(at, bal, procs))
    old, new = at.replicas(old_ns) if old_ns else [], at.replicas(new_ns)
    if not force and old and all(runs(procs[r.n], at, release) for r in old):
        obs.event(Event("info", at.host.name, "surge", at.pool.name, f"already on {release}"))
        _say_proven(proven)
        return []
    with _recovering(old + new, obs):
        _bring_up(at, new, release, procs, obs, timeout)
        # the first rollout of a pool has no old set: the other slots go out for good
        out = old or [r for r in at.replicas()
                      if r not in new and not balancer.member_of(bal, r).out]
        try:
            bal = _flip(at, new, out, bal, obs, parked=bool(old) and at.pool.keep_previous,
                        first=not old)
        except RolloutError:
            _unflip(at, old, new, obs)
            raise
        _say_proven(proven)
        _retire(at, [] if at.pool.keep_previous else old, new, bal, obs)
    return [r.name for r in new]


def serving(at: HostPool, bal: balancer.Balancer, procs: dict[int, Process]) -> set[int]:
    """The slots in rotation that really run a master (Apache enables a member it has never
    seen, so a fresh host's standby members read as in rotation)."""
    return {r.n for r in at.replicas()
            if balancer.member_of(bal, r).enabled and procs[r.n].runs_master(at.layout)}


def _say_proven(proven: Callable[[], None] | None) -> None:
    if proven is not None:
        proven()


def _bring_up(at: HostPool, new: list[Replica], release: str, procs: dict[int, Process],
              obs: Observer, timeout: float) -> None:
    """Start the new set at once (unless it is a parked set already on `release`), then
    gate every replica."""
    host, label = at.host.name, _names(new)
    parked = all(runs(procs[r.n], at, release) for r in new)
    # the gate asks each replica (ping, health); what each pinned it does not probe again:
    # a parked set's, the probe under this lock just read it and nothing started it since;
    # a started set's, the start read it once each master was up
    with step(obs, host, "start", label) as s:
        if parked:
            s.detail = f"parked set already runs {release}: nothing to start"
            pinned = {r.n: procs[r.n].release for r in new}
        else:
            pinned = _start_set(at, new, release, procs, timeout)
            s.detail = f"pinned {release}"
    with step(obs, host, "health", label):
        try:
            replica.health_gate_set(new, release, pinned=pinned)
        except RolloutError:
            _abandon(at, new)
            raise


def _start_set(at: HostPool, new: list[Replica], release: str, procs: dict[int, Process],
               timeout: float) -> dict[int, str | None]:
    """Stop what still runs in the standby slots (a parked set on another release, or
    replicas someone started by hand, maybe in rotation: drained and waited on first, so
    no request in flight is cut), then start them all at once; any that does not start
    takes the whole set away. Returns the release each new master pinned."""
    leftovers = [r for r in new if procs[r.n].alive or procs[r.n].strays]
    if leftovers:
        server.set_all(at, leftovers, server.DRAIN)
        replica.wait_unused(at, leftovers, timeout)
        server.disable_all(at, leftovers)
        # the same units start right below: not disabled at boot in between
        at.ask(fpm.stop_set(at, [r.n for r in leftovers], disable=False))
    # a failed unit must be reset before it starts: those the probe saw failed, and those
    # just stopped (a stop that escalated leaves the unit failed)
    reset = {r.n for r in new if procs[r.n].service == "failed"} | {r.n for r in leftovers}
    # enabled at boot later, by the host (retire.py): off the path to the new release
    started = at.ask(fpm.start_set(at, [r.n for r in new], release, enable=False,
                                   reset=reset))
    failed = [at.pool.replica_name(n) for n, s in started.items() if not s.ok]
    if failed:
        _abandon(at, new)
        raise RolloutError(f"{at.host.name}: {', '.join(failed)} did not start on {release}; "
                           "the new set was stopped, the serving set never left rotation")
    return {n: s.release for n, s in started.items()}


def _unflip(at: HostPool, old: list[Replica], new: list[Replica], obs: Observer) -> None:
    """A flip that failed, maybe half way (a member refused, a reload nginx failed): the old
    set back in rotation first, then the new set taken away, as after a failed gate; the
    caller reverts to the release the old set runs. Should that fail too, every healthy
    replica of both sets is put back: the host keeps serving, from both if need be."""
    try:
        if old:
            server.set_all(at, old, server.UP)
        _abandon(at, new)
    except FleetError:
        _recover_all(old + new, obs)


def _abandon(at: HostPool, new: list[Replica]) -> None:
    """The new set never served: out of rotation, stopped."""
    server.disable_all(at, new)
    at.ask(fpm.stop_set(at, [r.n for r in new]))


def _flip(at: HostPool, new: list[Replica], out: list[Replica], bal: Balancer,
          obs: Observer, parked: bool, first: bool) -> Balancer:
    """The new set in rotation and `out` out of it, in one round trip (new first: capacity
    never drops): the old set drained (parked with keep_previous), or on a pool's first
    rollout the idle slots disabled. Returns the balancer read back."""
    out_state = server.DISABLE if first else server.PARK if parked else server.DRAIN
    with step(obs, at.host.name, "flip", _names(new)) as s:
        # the balancer read at the start of the rollout: nothing changed its flags since
        bal, members, notes = server.flip(at, new, out, out_state, current=bal)
        s.detail = "; ".join(
            [f"in: {', '.join(members[r.n].status + _note(notes, r) for r in new)}"]
            + ([f"{'parked' if parked else 'out'}: {_names(out)}"] if out else []))
    return bal


def _note(notes: dict[int, str], r: Replica) -> str:
    return f" ({notes[r.n]})" if r.n in notes else ""


def _retire(at: HostPool, old: list[Replica], new: list[Replica], bal: Balancer,
            obs: Observer) -> None:
    """Leave the rest to the host (retire.py): the old set waited on for its longest
    request and stopped, the new set enabled at boot."""
    with step(obs, at.host.name, "retire" if old else "enable at boot",
              _names(old or new)) as s:
        at.ask(retire.retire(at, old, new, bal))
        s.detail = "left to the host: drain, stop" if old else "left to the host"


@contextmanager
def _recovering(replicas: list[Replica], obs: Observer) -> Iterator[None]:
    """On Ctrl-C / SIGTERM, or a failure the steps did not handle, every replica of both
    sets that runs and is healthy is put back: the host keeps serving, maybe from both
    sets (status then shows how to finish)."""
    try:
        yield
    except (KeyboardInterrupt, AnswerError) as exc:
        _recover_all(replicas, obs)
        raise exc from None
    except FleetError:
        raise
    except Exception as exc:
        _recover_all(replicas, obs)
        raise as_failure(replicas[0].host, exc) from None


def _recover_all(replicas: list[Replica], obs: Observer) -> None:
    for r in replicas:
        try:
            with shielded(r.at.runner):
                state = replica.recover(r)
        except Exception as exc:
            state = f"state unknown, not put back ({as_failure(r.host, exc)})"
        obs.event(Event("warn", r.host.name, "recover", r.name, state))
