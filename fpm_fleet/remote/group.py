"""Run one per-host operation across hosts (as Fabric's Group does): one after the other,
or K at a time, and return per host its value or its error.

The first failure stops a run by default: hosts not started stay untouched. Ctrl-C /
SIGTERM in a parallel run stops every host at its next remote command (runner.Interruptible)
once the main thread hears it.

`HostGroup.roll` is the order of the rollouts (deploy, rollback, restart): a canary stage
first, which must prove itself, then the rest of the fleet K at a time. Which hosts may start
is decided by the pure `may_start`; only the main thread decides, from what the hosts report.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import closing
from dataclasses import dataclass, field, replace
from typing import IO, Generic, TypeVar

from fpm_fleet.core.errors import FleetError, RemoteResult, RolloutError
from fpm_fleet.core.events import Event, Observer
from fpm_fleet.core.inventory import Host
from fpm_fleet.core.selection import DEFAULT_PARALLEL, canary_stage
from fpm_fleet.remote.ahead import Ahead
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.runner import Interruptible, Runner
from fpm_fleet.remote.ssh import SSHRunner, connect, session_opened

log = logging.getLogger("fpm_fleet.group")
T = TypeVar("T")

# What a rolling host calls once it has proven the release (its new replicas passed their
# gates and serve): the next stage may start while it finishes (its old replicas drain).
Proven = Callable[[], None]


@dataclass(frozen=True)
class HostOutcome(Generic[T]):
    """What one host's operation returned, or why it failed; `reached` is False for a host
    the run never started (untouched)."""

    host: str
    value: T | None = None
    error: FleetError | None = None
    reached: bool = False
    seconds: float = 0.0
    canary: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def label(self) -> str:
        """The host's name as a recap shows it: a canary says so."""
        return f"{self.host} (canary)" if self.canary else self.host


@dataclass(frozen=True)
class GroupResult(Generic[T]):
    """Per host, in the order the hosts were given."""

    outcomes: tuple[HostOutcome[T], ...]

    def __iter__(self) -> Iterator[HostOutcome[T]]:
        return iter(self.outcomes)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes)

    @property
    def failed(self) -> list[HostOutcome[T]]:
        return [o for o in self.outcomes if not o.ok]

    def values(self) -> dict[str, T]:
        return {o.host: o.value for o in self.outcomes if o.ok and o.value is not None}

    def raise_first_failure(self, title: str) -> None:
        """Raise the first failed host's error (with its exit code), naming the hosts the
        run never reached (untouched)."""
        if not self.failed:
            return
        first = self.failed[0]
        untouched = [o.host for o in self.outcomes if o.ok and not o.reached]
        tail = f"; not reached (untouched): {', '.join(untouched)}" if untouched else ""
        stage = " on the canary" if first.canary else ""
        error = RolloutError(f"{title} failed{stage}: {first.error}{tail}")
        error.exit_code = first.error.exit_code if first.error else RolloutError.exit_code
        raise error


@dataclass
class HostGroup:
    """The hosts a task acts on, and how: `run` does `parallel` at a time, stopping at the
    first failure unless told otherwise; `roll` is the rollouts' order (its own canary and
    parallel). `connector` opens a host's runner (default: SSH)."""

    obs: Observer
    parallel: int = 1
    stop_on_failure: bool = True
    connector: Callable[[Host], Runner] | None = None
    # connections the task opened before it loaded the rollout machinery (its first hosts)
    early: Ahead[SSHRunner] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _interrupt: threading.Event = field(default_factory=threading.Event)

    def run(self, hosts: tuple[Host, ...], work: Callable[[Runner, Host], T]
            ) -> GroupResult[T]:
        if self.parallel <= 1:
            return GroupResult(tuple(self._one(h, work, threaded=False) for h in hosts))
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            futures = [pool.submit(self._one, h, work, threaded=True) for h in hosts]
            try:
                # short waits: the main thread checks for Ctrl-C / SIGTERM in between
                while wait(futures, timeout=0.1).not_done:
                    pass
            except KeyboardInterrupt:
                self._interrupted()
                raise  # once every host put its replica back (the pool waits)
            return GroupResult(tuple(f.result() for f in futures))

    def roll(self, hosts: tuple[Host, ...], work: Callable[[Runner, Host, Proven], T],
             canary: int = 1, parallel: int = DEFAULT_PARALLEL) -> GroupResult[T]:
        """The rollout order: the first `canary` hosts roll first, and once every one of them
        has proven itself (called its `proven()`, or returned), the others roll, at most
        `parallel` hosts in flight at once. `parallel` 1 is one host after another, in this
        thread (a host's proven() then changes nothing).

        The first failure stops the run, whatever `stop_on_failure` says: no host starts
        after it; hosts in flight finish (or revert) on their own; a failed canary leaves
        every other host untouched. The result keeps the hosts' order."""
        stage = canary_stage(len(hosts), canary, parallel)
        rolling: _Rolling[T] = _Rolling(hosts, stage)
        wave = [h for i, h in enumerate(hosts) if i not in stage] if stage else []
        warm = Ahead(wave, self.connector or self._connect_ahead, parallel)

        def run_host(i: int, threaded: bool) -> None:
            def with_proof(runner: Runner, host: Host) -> T:
                return work(runner, host, lambda: rolling.reports.put((i, None)))

            rolling.reports.put((i, self._one(hosts[i], with_proof, threaded, warm.take)))

        futures: list[Future[None]] = []
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool, closing(warm):
            try:
                while True:
                    for i in may_start(rolling.states, stage, parallel):
                        rolling.states[i] = HostState.RUNNING
                        if parallel > 1:
                            futures.append(pool.submit(run_host, i, True))
                        else:
                            run_host(i, False)
                    if not any(s.in_flight for s in rolling.states):
                        return rolling.result()
                    _raise_from_threads(futures)
                    rolling.take_report(timeout=0.1)  # between waits: Ctrl-C / SIGTERM
            except KeyboardInterrupt:
                self._interrupted()
                raise  # once every host put its replica back (the pool waits)

    def _interrupted(self) -> None:
        self._stop.set()  # hosts not started (still queued in the pool) stay untouched
        self._interrupt.set()  # the others stop at their next step

    def _connect(self, host: Host) -> Runner:
        return self._opened_early(host) or ssh_runner(host, self.obs)

    def _connect_ahead(self, host: Host) -> Runner:
        return self._opened_early(host) or session_opened(ssh_runner(host, self.obs))

    def _opened_early(self, host: Host) -> SSHRunner | None:
        return self.early.take(host) if self.early else None

    def _one(self, host: Host, work: Callable[[Runner, Host], T], threaded: bool,
             opened: Callable[[Host], Runner | None] = lambda h: None) -> HostOutcome[T]:
        if self._stop.is_set():
            return HostOutcome(host.name)
        started = time.monotonic()
        reached = False
        try:
            runner = opened(host) or (self.connector or self._connect)(host)
            if threaded:  # only the main thread hears Ctrl-C: this host must be told
                runner = Interruptible(runner, self._interrupt)
            reached = True
            try:
                value = work(runner, host)
            finally:
                close = getattr(runner, "close", None)
                if close:
                    close()
        except Exception as exc:
            failure = as_failure(host, exc)
            self.obs.event(Event("fail", host.name, "host", detail=str(failure)))
            if self.stop_on_failure:
                self._stop.set()
            return HostOutcome(host.name, None, failure, reached, time.monotonic() - started)
        return HostOutcome(host.name, value, None, True, time.monotonic() - started)


def ssh_runner(host: Host, obs: Observer) -> SSHRunner:
    """An SSH runner; a new host key trusted on the way is said as a warning."""
    def say(message: str) -> None:
        obs.event(Event("warn", host.name, "host key", detail=message))

    return SSHRunner(host, connect(host, say))


class KeptConnections:
    """One SSH connection per host for a whole task, lent to its HostGroups in turn (a
    rollback reads its targets on every host, then rolls them: one handshake per host, not
    two, and a handshake costs more than the round trips of a parked set's flip). A group
    closes what it opened itself, never these: `close` does, once the task is done."""

    def __init__(self, obs: Observer,
                 opener: Callable[[Host, Observer], SSHRunner] | None = None,
                 early: Ahead[SSHRunner] | None = None) -> None:
        self.obs = obs
        self.opener = opener or ssh_runner
        self.early = early  # connections the task opened at start-up
        self._open: dict[str, SSHRunner] = {}
        self._lock = threading.Lock()

    def runner(self, host: Host) -> Runner:
        with self._lock:
            kept = self._open.get(host.name)
        if kept is None:
            kept = (self.early.take(host) if self.early else None) or self.opener(host, self.obs)
            with self._lock:
                self._open[host.name] = kept
        return _Lent(kept)

    def close(self) -> None:
        with self._lock:
            kept, self._open = list(self._open.values()), {}
        for runner in kept:
            runner.close()


class _Lent:
    """A kept runner as a group sees it: everything but close."""

    def __init__(self, inner: SSHRunner) -> None:
        self.inner, self.host = inner, inner.host

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        return self.inner.run(command, what, check=check, timeout=timeout)

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]:
        return self.inner.stream(command, what, source, timeout=timeout)

    def ask(self, cmd: Command[T]) -> T:
        return self.inner.ask(cmd)


def as_failure(host: Host, exc: Exception) -> FleetError:
    """Any exception as the FleetError of one host: ours as they are, anything else (a bug,
    an answer the parsers did not expect) as a RolloutError whose traceback goes to the log."""
    if isinstance(exc, FleetError):
        return exc
    log.error("[%s] unexpected error", host.name, exc_info=exc)
    return RolloutError(f"{host.name}: unexpected error: {type(exc).__name__}: {exc} "
                        "(details in the log)")


class HostState(enum.Enum):
    """Where a host of a roll is, as the main thread knows it from the hosts' reports."""

    WAITING = "waiting"
    RUNNING = "running"
    PROVEN = "proven"  # still running: its old replicas drain
    DONE = "done"
    FAILED = "failed"

    @property
    def in_flight(self) -> bool:
        return self in (HostState.RUNNING, HostState.PROVEN)

    @property
    def proven(self) -> bool:
        return self in (HostState.PROVEN, HostState.DONE)

    def proved(self) -> HostState:
        """After the host's proven(): a second call, or one after it ended, changes nothing."""
        return HostState.PROVEN if self is HostState.RUNNING else self

    @staticmethod
    def ended(ok: bool) -> HostState:
        return HostState.DONE if ok else HostState.FAILED


@dataclass
class _Rolling(Generic[T]):
    """A roll as the main thread sees it: each host's state, and the outcomes so far. Hosts
    report through `reports` (their thread's only write): (index, None) for proven(),
    (index, outcome) at the end."""

    hosts: tuple[Host, ...]
    stage: range
    reports: queue.SimpleQueue[tuple[int, HostOutcome[T] | None]] = field(
        default_factory=queue.SimpleQueue)
    states: list[HostState] = field(default_factory=list)
    outcomes: dict[int, HostOutcome[T]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.states = [HostState.WAITING] * len(self.hosts)

    def take_report(self, timeout: float) -> None:
        try:
            i, report = self.reports.get(timeout=timeout)
        except queue.Empty:
            return
        if report is None:
            self.states[i] = self.states[i].proved()
        else:
            self.states[i] = HostState.ended(report.ok)
            self.outcomes[i] = replace(report, canary=i in self.stage)

    def result(self) -> GroupResult[T]:
        return GroupResult(tuple(self.outcomes.get(i, HostOutcome(h.name, canary=i in self.stage))
                                 for i, h in enumerate(self.hosts)))


def may_start(states: Sequence[HostState], stage: range, parallel: int) -> list[int]:
    """The hosts to start now, in inventory order: none once a host failed; the canary
    stage first; every other host once each canary has proven itself; never more than
    `parallel` in flight (a proven host still counts: its SSH session is open)."""
    if HostState.FAILED in states:
        return []
    open_slots = max(1, parallel) - sum(s.in_flight for s in states)
    proven = all(states[i].proven for i in stage)
    eligible = range(len(states)) if proven else stage
    return [i for i in eligible if states[i] is HostState.WAITING][:max(0, open_slots)]


def _raise_from_threads(futures: Sequence[Future[None]]) -> None:
    """A host's thread that ended by an exception `_one` does not catch (a BaseException)
    raises it here, in the main thread, rather than leaving the roll waiting for it."""
    for f in futures:
        if f.done() and f.exception() is not None:
            f.result()
