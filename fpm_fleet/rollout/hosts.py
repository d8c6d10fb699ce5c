"""Operations on the replicas of one host: order, preflight, restart, start,
stop, and the recovery of a replica a failure or an interrupt left out of rotation.

Within a host, pool after pool, replica after replica, those not serving first; each
function returns the replicas it completed. Across hosts: remote/group.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fpm_fleet.core.errors import AnswerError, RolloutError
from fpm_fleet.core.events import Event, Observer
from fpm_fleet.core.inventory import SURGE, Host
from fpm_fleet.core.selection import Selection
from fpm_fleet.host import fpm
from fpm_fleet.host.fpm import Process, StopOutcome
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.releases import store
from fpm_fleet.remote.command import together
from fpm_fleet.remote.group import Proven, as_failure
from fpm_fleet.remote.runner import Runner, shielded
from fpm_fleet.rollout import replica, retire, surge
from fpm_fleet.web import balancer, server
from fpm_fleet.web.balancer import Balancer


def ordered(at: HostPool, numbers: list[int]) -> list[Replica]:
    """Replicas that are not serving go first: restarting them costs no capacity."""
    bal = server.read(at)
    replicas = at.replicas(numbers)
    serving = [r for r in replicas if balancer.member_of(bal, r).enabled]
    return [r for r in replicas if r not in serving] + serving


@contextmanager
def tracked(r: Replica, obs: Observer) -> Iterator[None]:
    """On Ctrl-C / SIGTERM mid-step put the replica back if it runs and is healthy, and
    report its state. So does any failure the steps did not handle themselves (a remote
    command that failed, an answer that could not be parsed): the host fails with a message,
    never a traceback, and never leaves a healthy replica drained."""
    try:
        yield
    except KeyboardInterrupt:
        _recover(r, obs, "interrupted")
        raise
    except AnswerError:
        _recover(r, obs, "recover")
        raise
    except RolloutError:
        raise
    except Exception as exc:
        _recover(r, obs, "recover")
        raise as_failure(r.host, exc) from None


def _recover(r: Replica, obs: Observer, what: str) -> None:
    """Put the replica back if it runs and is healthy; say what state it is left in. A failure
    of the recovery itself (the connection is gone) is said, never raised over the cause."""
    try:
        with shielded(r.at.runner):
            state = replica.recover(r, start_stopped=True)
    except Exception as exc:
        state = f"state unknown, not put back ({as_failure(r.host, exc)})"
    obs.event(Event("warn", r.host.name, what, r.name, state))


@dataclass(frozen=True)
class Preflight:
    """What a preflight found, under the lock: the release current.release names, the
    replicas it put back, and what it read to decide (the rollout starts from it instead of
    reading the host again, and the deploy's cleanup is decided from it)."""

    current: str | None
    healed: list[str]
    bal: Balancer
    procs: dict[int, Process]
    releases: list[store.ReleaseInfo]

    def reading(self) -> surge.Reading | None:
        """The balancer and replicas as read; None once the preflight changed them (it put
        replicas back), so the rollout reads them again."""
        return None if self.healed else (self.bal, self.procs)


def preflight(at: HostPool, obs: Observer) -> Preflight:
    """Before any rollout of a pool: fail here, before anything changes, when the balancer
    cannot be read or lacks a member (or nginx's configuration fails `nginx -t`); and put
    back what an interrupted run left out of rotation (a replica that runs and passes its
    health gate, yet is drained or disabled).

    First (in the same round trip) it waits for the old set of the pool's last surge to
    retire (retire.py). An old set whose retirement was cut short (a reboot) is left out:
    its release is no longer current, and the next surge stops it before it uses its
    slots."""
    server.check_config(at)
    waited: float
    bal: Balancer
    procs: dict[int, Process]
    current: str | None
    listed: list[store.ReleaseInfo]
    waited, bal, procs, current, listed = at.ask(together(
        f"read {at.pool.name} retirement, balancer, replicas, current.release and releases",
        [retire.wait_retired(at), server.read_command(at), fpm.probe(at),
         fpm.current_release(at), store.releases_read(at, sizes=False)],
        at_once_from=1))  # what the old set's retirement leaves, read side by side
    _say_settled(at, obs, waited)
    healed = []
    for r in at.replicas():
        member, proc = balancer.member_of(bal, r), procs[r.n]
        if not member.out or "Stby" in member.flags or not proc.runs_master(at.layout):
            continue  # serving, parked on purpose (keep_previous), or not running
        if at.pool.strategy == SURGE and proc.release != current:
            continue  # an old set a cut-short retirement left drained
        try:
            replica.health_gate(r, proc.release or "", attempts=2)
        except RolloutError:
            continue
        status, _ = server.enable(r)
        healed.append(r.name)
        obs.event(Event("warn", at.host.name, "recover", r.name, "running and healthy but out "
                        f"of rotation (left by an interrupted run): put back, {status.status}"))
    return Preflight(current, healed, bal, procs, listed)


def settle(at: HostPool, obs: Observer) -> float:
    """Wait until the old set of the pool's last surge has retired (retire.py); returns the
    seconds waited, said when it is noticeable."""
    waited = at.ask(retire.wait_retired(at))
    _say_settled(at, obs, waited)
    return waited


def _say_settled(at: HostPool, obs: Observer, waited: float) -> None:
    if waited >= 0.1:
        obs.event(Event("info", at.host.name, "settle", at.pool.name,
                        f"waited {waited:.1f}s for the last rollout's old set to retire"))


def current_or_fail(at: HostPool, pf: Preflight) -> str:
    """The release current.release named at the preflight (under the same lock)."""
    target = pf.current
    if not target:
        raise RolloutError(f"{at.host.name}: pool {at.pool.name} has no current.release; "
                           "deploy a release first")
    return target


def restart_host(runner: Runner, host: Host, sel: Selection, obs: Observer,
                 timeout: float, proven: Proven | None = None) -> list[str]:
    """Restart the selected replicas of every selected pool on one host: a surge pool
    starts its standby set and retires the serving one (one replica chosen with --replica
    restarts on its own, drained first, as a rolling pool's replicas do)."""
    done = []
    for i, pool in enumerate(sel.pools):
        at = HostPool(runner, host, pool)
        last = proven if i == len(sel.pools) - 1 else None
        pf = preflight(at, obs)
        target = current_or_fail(at, pf)
        if pool.strategy == SURGE and sel.replica is None:
            done += surge.surge_to(at, target, obs, timeout, proven=last, force=True,
                                   seen=pf.reading())
            continue
        for r in ordered(at, sel.replicas(pool)):
            with tracked(r, obs):
                replica.restart(r, target, obs, timeout)
            done.append(r.label)
        if last is not None:
            last()
    return done


def start_host(runner: Runner, host: Host, sel: Selection, obs: Observer) -> list[str]:
    """Start what is not running (pinned to current.release), gate it, enable it."""
    done = []
    for pool in sel.pools:
        at = HostPool(runner, host, pool)
        pf = preflight(at, obs)
        numbers = _to_start(at, sel)
        procs = at.ask(fpm.probe(at, numbers))
        for r in at.replicas(numbers):
            proc = procs[r.n]
            if proc.runs_master(at.layout):
                obs.event(Event("info", host.name, "start", r.name,
                                f"already running (pid {proc.pid}, {proc.release}): no-op"))
                continue
            target = current_or_fail(at, pf)
            with tracked(r, obs):
                replica.start(r, target, obs)
            done.append(r.label)
    return done


def _to_start(at: HostPool, sel: Selection) -> list[int]:
    """The replicas `fab start` brings up: the selected ones; for a surge pool without
    --replica, the set in rotation (the first set when none serves), never the standby."""
    if at.pool.strategy != SURGE or sel.replica is not None:
        return sel.replicas(at.pool)
    bal = server.read(at)
    enabled = {r.n for r in at.replicas() if balancer.member_of(bal, r).enabled}
    active, standby = surge.pick_sets(at.pool, enabled)  # what ran (all may be stopped)
    return active or standby


def stop_host(runner: Runner, host: Host, sel: Selection, obs: Observer, timeout: float,
              force: bool) -> list[str]:
    """Drain, wait idle and stop; the guard keeps the last healthy replica unless --force."""
    done = []
    for pool in sel.pools:
        settle(HostPool(runner, host, pool), obs)
        for r in HostPool(runner, host, pool).replicas(sel.replicas(pool)):
            if r.ask(fpm.running_master(r)) is None:
                _stop_remains(r, obs, timeout)
                continue
            replica.take_out(r, obs, timeout, check=not force)
            replica.stop(r, obs)
            r.ask(fpm.disable(r))
            server.disable(r)
            done.append(r.label)
    return done


def _stop_remains(r: Replica, obs: Observer, timeout: float) -> None:
    """A replica whose master is gone: out of rotation, its orphaned workers finish, and its
    service is stopped and disabled all the same."""
    server.disable(r)
    replica.wait_idle(r, timeout)  # workers of a dead master may still work
    stopped = r.ask(fpm.stop(r))
    r.ask(fpm.disable(r))
    obs.event(Event("info", r.host.name, "stop", r.name, "was not running: nothing to do"
                    if stopped.outcome is StopOutcome.NOT_RUNNING
                    else f"no master: {stopped}"))
