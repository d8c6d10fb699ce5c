"""The plan over hosts, pools and replicas: selection, order, the guard, stop-on-failure.

Hosts are done one after the other in inventory order (or K at a time with `parallel`);
within a host, pool after pool, replica after replica, those not serving first. The first
failure stops the rollout: hosts not reached stay untouched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field

from fpm_fleet.errors import AnswerError, FleetError, RolloutError, UsageError
from fpm_fleet.events import Event, Observer
from fpm_fleet.host import fpm
from fpm_fleet.inventory import Fleet, Host, Pool
from fpm_fleet.remote.ssh import Executor, Interruptible, SSHExecutor, connect, shielded
from fpm_fleet.rollout import replica
from fpm_fleet.rollout.replica import Replica
from fpm_fleet.web import balancer

log = logging.getLogger("fpm_fleet.rollout")


@dataclass(frozen=True)
class Selection:
    hosts: tuple[Host, ...]
    pools: tuple[Pool, ...]
    replica: int | None = None

    def replicas(self, host: Host, pool: Pool) -> list[int]:
        return [self.replica] if self.replica else list(pool.replica_numbers)


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def select(fleet: Fleet, host: str | None = None, pool: str | None = None,
           replica: int | str | None = None) -> Selection:
    """Resolve --host (comma list), --pool and --replica; unknown names list the valid ones."""
    known_hosts = [h.name for h in fleet.hosts]
    for name in _names(host):
        if name not in known_hosts:
            raise UsageError(f"unknown host {name!r}; valid hosts: {', '.join(known_hosts)}")
    known_pools = [p.name for p in fleet.pools]
    if pool and pool not in known_pools:
        raise UsageError(f"unknown pool {pool!r}; valid pools: {', '.join(known_pools)}")
    hosts = tuple(h for h in fleet.hosts if not _names(host) or h.name in _names(host))
    pools = tuple(p for p in fleet.pools if not pool or p.name == pool)
    n = _replica_number(replica, pools)
    return Selection(hosts, pools, n)


def _replica_number(replica: int | str | None, pools: tuple[Pool, ...]) -> int | None:
    if replica in (None, "", 0, "0"):
        return None
    try:
        n = int(replica)
    except ValueError:
        raise UsageError(f"--replica must be a number, got {replica!r}") from None
    valid = sorted({i for p in pools for i in p.replica_numbers})
    if n not in valid or any(n > p.replicas for p in pools):
        raise UsageError(f"unknown replica {n}; valid replicas: "
                         f"{', '.join(map(str, valid))} (use --pool to pick one pool)")
    return n


@dataclass
class HostResult:
    host: str
    ok: bool = True
    error: str = ""
    done: int = 0
    failed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    reached: bool = False
    exit_code: int = 0


@dataclass
class Runner:
    """Runs one per-host operation across the selection and collects HostResults."""

    obs: Observer
    parallel: int = 1
    stop_on_failure: bool = True
    connector: Callable[[Host], Executor] | None = None  # default: SSH, see _connect
    _stop: threading.Event = field(default_factory=threading.Event)
    _interrupt: threading.Event = field(default_factory=threading.Event)

    def run(self, hosts: tuple[Host, ...],
            work: Callable[[Executor, Host, HostResult], None]) -> list[HostResult]:
        results = {h.name: HostResult(h.name) for h in hosts}
        if self.parallel <= 1:
            for h in hosts:
                if self._stop.is_set():
                    break
                self._one(h, work, results[h.name])
        else:
            with ThreadPoolExecutor(max_workers=self.parallel) as pool:
                futures = [pool.submit(self._one, h, work, results[h.name]) for h in hosts]
                try:
                    # short waits: the main thread checks for Ctrl-C / SIGTERM in between
                    while wait(futures, timeout=0.1).not_done:
                        pass
                    for future in futures:
                        future.result()
                except KeyboardInterrupt:
                    self._stop.set()  # hosts not started stay untouched
                    self._interrupt.set()  # the others stop at their next step
                    raise  # once every host put its replica back (the pool waits)
        return [results[h.name] for h in hosts]

    def _connect(self, host: Host) -> Executor:
        """An SSH executor; a new host key trusted on the way is said as a warning."""
        def say(message: str) -> None:
            self.obs.event(Event("warn", host.name, "host key", detail=message))

        return SSHExecutor(host, connect(host, say))

    def _one(self, host: Host, work: Callable[[Executor, Host, HostResult], None],
             result: HostResult) -> None:
        if self._stop.is_set():
            return
        started = time.monotonic()
        try:
            ex = (self.connector or self._connect)(host)
            if self.parallel > 1:
                ex = Interruptible(ex, self._interrupt)
            result.reached = True
            try:
                work(ex, host, result)
            finally:
                close = getattr(ex, "close", None)
                if close:
                    close()
        except Exception as exc:
            failure = as_failure(host, exc)
            result.ok, result.error, result.exit_code = False, str(failure), failure.exit_code
            self.obs.event(Event("fail", host.name, "host", detail=str(failure)))
            if self.stop_on_failure:
                self._stop.set()
        finally:
            result.seconds = time.monotonic() - started


def ordered_replicas(ex: Executor, host: Host, pool: Pool, numbers: list[int]) -> list[int]:
    """Replicas that are not serving go first: restarting them costs no capacity."""
    bal = balancer.read(ex, host, pool)
    serving = {n for n in numbers if balancer.member_of(bal, host, pool, n).enabled}
    return [n for n in numbers if n not in serving] + [n for n in numbers if n in serving]


@contextmanager
def tracked(ex: Executor, r: Replica, obs: Observer, result: HostResult) -> Iterator[None]:
    """Count the replica in the host's recap; on Ctrl-C / SIGTERM mid-step put it back if it
    runs and is healthy, and report its state. So does any failure the steps did not handle
    themselves (a remote command that failed, an answer that could not be parsed): the host
    fails with a message, never a traceback, and never leaves a healthy replica drained."""
    try:
        yield
    except KeyboardInterrupt:
        _recover(ex, r, obs, "interrupted")
        raise
    except AnswerError:
        result.failed += 1
        _recover(ex, r, obs, "recover")
        raise
    except RolloutError:
        result.failed += 1
        raise
    except Exception as exc:
        result.failed += 1
        _recover(ex, r, obs, "recover")
        raise as_failure(r.host, exc) from None
    result.done += 1


def _recover(ex: Executor, r: Replica, obs: Observer, what: str) -> None:
    """Put the replica back if it runs and is healthy; say what state it is left in. A failure
    of the recovery itself (the connection is gone) is said, never raised over the cause."""
    try:
        with shielded(ex):
            state = replica.recover(ex, r)
    except Exception as exc:
        state = f"state unknown, not put back ({as_failure(r.host, exc)})"
    obs.event(Event("warn", r.host.name, what, r.name, state))


def as_failure(host: Host, exc: Exception) -> FleetError:
    """Any exception as the FleetError of one host: ours as they are, anything else (a bug,
    an answer the parsers did not expect) as a RolloutError whose traceback goes to the log."""
    if isinstance(exc, FleetError):
        return exc
    log.error("[%s] unexpected error", host.name, exc_info=exc)
    return RolloutError(f"{host.name}: unexpected error: {type(exc).__name__}: {exc} "
                        "(details in the log)")


def heal(ex: Executor, host: Host, pool: Pool, obs: Observer) -> None:
    """Put back what an interrupted run left out of rotation: a replica that runs, passes its
    health gate, yet is drained or disabled. Also the preflight of every rollout: it fails
    before anything changes when balancer-manager cannot be read or lacks a member."""
    bal = balancer.read(ex, host, pool)
    procs = fpm.probe(ex, host, pool)
    for n in pool.replica_numbers:
        r = Replica(host, pool, n)
        member, proc = balancer.member_of(bal, host, pool, n), procs[n]
        if not member.out or not proc.runs_master(r.layout):
            continue
        try:
            replica.health_gate(ex, r, proc.release or "", attempts=2)
        except RolloutError:
            continue
        status, _ = balancer.enable(ex, host, pool, n)
        obs.event(Event("warn", host.name, "recover", r.name, "running and healthy but out of "
                        f"rotation (left by an interrupted run): put back, {status.status}"))


def restart_host(ex: Executor, host: Host, sel: Selection, obs: Observer, timeout: float,
                 result: HostResult, release: str | None = None) -> None:
    """Restart the selected replicas of every selected pool on one host."""
    for pool in sel.pools:
        heal(ex, host, pool, obs)
        target = release or fpm.current_release(ex, host, pool)
        if not target:
            raise RolloutError(f"{host.name}: pool {pool.name} has no current.release; deploy "
                               "a release first")
        for n in ordered_replicas(ex, host, pool, sel.replicas(host, pool)):
            r = Replica(host, pool, n)
            with tracked(ex, r, obs, result):
                replica.restart(ex, r, target, obs, timeout)


def start_host(ex: Executor, host: Host, sel: Selection, obs: Observer,
               result: HostResult) -> None:
    """Start what is not running (pinned to current.release), gate it, enable it."""
    for pool in sel.pools:
        heal(ex, host, pool, obs)
        target = fpm.current_release(ex, host, pool)
        procs = fpm.probe(ex, host, pool, sel.replicas(host, pool))
        for n, proc in procs.items():
            r = Replica(host, pool, n)
            if proc.runs_master(r.layout):
                obs.event(Event("info", host.name, "start", r.name,
                                f"already running (pid {proc.pid}, {proc.release}): no-op"))
                continue
            if not target:
                raise RolloutError(f"{host.name}: pool {pool.name} has no current.release")
            with tracked(ex, r, obs, result):
                replica.start(ex, r, target, obs)


def stop_host(ex: Executor, host: Host, sel: Selection, obs: Observer, timeout: float,
              force: bool, result: HostResult) -> None:
    """Drain, wait idle and stop; the guard keeps the last healthy replica unless --force."""
    for pool in sel.pools:
        for n in sel.replicas(host, pool):
            r = Replica(host, pool, n)
            if fpm.running_master(ex, host, pool, n) is None:
                balancer.disable(ex, host, pool, n)
                replica.wait_idle(ex, r, timeout)  # workers of a dead master may still work
                outcome = fpm.stop(ex, host, pool, n)
                fpm.disable(ex, host, pool, n)
                obs.event(Event("info", host.name, "stop", r.name, "was not running: nothing to do"
                                if outcome == "not-running" else f"no master: {outcome}"))
                continue
            replica.take_out(ex, r, obs, timeout, check=not force)
            replica.stop(ex, r, obs, timeout)
            fpm.disable(ex, host, pool, n)
            balancer.disable(ex, host, pool, n)
            result.done += 1


def stopped(title: str, results: list[HostResult]) -> None:
    """Raise for the first failed host, with that failure's own exit code, naming the hosts
    the run never reached (untouched)."""
    failed = [r for r in results if not r.ok]
    if failed:
        untouched = [r.host for r in results if r.ok and not r.reached]
        tail = f"; not reached (untouched): {', '.join(untouched)}" if untouched else ""
        error = RolloutError(f"{title} failed: {failed[0].error}{tail}")
        error.exit_code = failed[0].exit_code or RolloutError.exit_code
        raise error
