"""Run one per-host operation across hosts (as Fabric's Group does): one after the other,
or K at a time, and return per host its value or its error.

The first failure stops a run by default: hosts not started stay untouched. Ctrl-C /
SIGTERM in a parallel run stops every host at its next remote command (runner.Interruptible)
once the main thread hears it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fpm_fleet.core.errors import FleetError, RolloutError
from fpm_fleet.core.events import Event, Observer
from fpm_fleet.core.inventory import Host
from fpm_fleet.remote.runner import Interruptible, Runner
from fpm_fleet.remote.ssh import SSHRunner, connect

log = logging.getLogger("fpm_fleet.group")
T = TypeVar("T")


@dataclass(frozen=True)
class HostOutcome(Generic[T]):
    """What one host's operation returned, or why it failed; `reached` is False for a host
    the run never started (untouched)."""

    host: str
    value: T | None = None
    error: FleetError | None = None
    reached: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


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
        error = RolloutError(f"{title} failed: {first.error}{tail}")
        error.exit_code = first.error.exit_code if first.error else RolloutError.exit_code
        raise error


@dataclass
class HostGroup:
    """The hosts a task acts on, and how: `parallel` at a time, stopping at the first
    failure unless told otherwise. `connector` opens a host's runner (default: SSH)."""

    obs: Observer
    parallel: int = 1
    stop_on_failure: bool = True
    connector: Callable[[Host], Runner] | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _interrupt: threading.Event = field(default_factory=threading.Event)

    def run(self, hosts: tuple[Host, ...], work: Callable[[Runner, Host], T]
            ) -> GroupResult[T]:
        if self.parallel <= 1:
            return GroupResult(tuple(self._one(h, work) for h in hosts))
        with ThreadPoolExecutor(max_workers=self.parallel) as pool:
            futures = [pool.submit(self._one, h, work) for h in hosts]
            try:
                # short waits: the main thread checks for Ctrl-C / SIGTERM in between
                while wait(futures, timeout=0.1).not_done:
                    pass
            except KeyboardInterrupt:
                self._stop.set()  # hosts not started stay untouched
                self._interrupt.set()  # the others stop at their next step
                raise  # once every host put its replica back (the pool waits)
            return GroupResult(tuple(f.result() for f in futures))

    def _connect(self, host: Host) -> Runner:
        """An SSH runner; a new host key trusted on the way is said as a warning."""
        def say(message: str) -> None:
            self.obs.event(Event("warn", host.name, "host key", detail=message))

        return SSHRunner(host, connect(host, say))

    def _one(self, host: Host, work: Callable[[Runner, Host], T]) -> HostOutcome[T]:
        if self._stop.is_set():
            return HostOutcome(host.name)
        started = time.monotonic()
        reached = False
        try:
            runner = (self.connector or self._connect)(host)
            if self.parallel > 1:
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


def as_failure(host: Host, exc: Exception) -> FleetError:
    """Any exception as the FleetError of one host: ours as they are, anything else (a bug,
    an answer the parsers did not expect) as a RolloutError whose traceback goes to the log."""
    if isinstance(exc, FleetError):
        return exc
    log.error("[%s] unexpected error", host.name, exc_info=exc)
    return RolloutError(f"{host.name}: unexpected error: {type(exc).__name__}: {exc} "
                        "(details in the log)")
