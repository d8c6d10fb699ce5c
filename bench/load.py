"""Load windows: constant load on the fleet, one action in the middle, what clients saw.

The load is tasks.stress.Stress in-process (per host: 2 fast /ping.php loops, 2 slow
/sleep.php loops, 1 atomic.php loop), bounded in time (the window) and in count
(`max_requests` per host). Its fetcher is wrapped to also record when each request started
and ended, so a window can show how many slow requests were in flight when the action began
and when the failures happened.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tasks import stress
from tasks.inventory import Fleet
from tasks.stress import Sample, Target

from .profile import Profile

T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    """One request as seen by the client clock (monotonic seconds)."""

    host: str
    kind: str
    start: float
    end: float
    ok: bool


def kind_of(path: str) -> str:
    return {"/ping.php": "fast", "/sleep.php": "slow"}.get(path.split("?")[0], "atomic")


class Clock:
    """A Stress fetcher that records the start, end and success of every request."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.lock = threading.Lock()

    def __call__(self, target: Target, path: str, timeout: float) -> tuple[int, str]:
        start, ok = time.monotonic(), False
        try:
            status, body = stress.fetch(target, path, timeout)
            ok = 200 <= status < 300
            return status, body
        finally:
            span = Span(target.host, kind_of(path), start, time.monotonic(), ok)
            with self.lock:
                self.spans.append(span)


@dataclass
class Window:
    """What the clients saw during one window (all hosts together)."""

    scenario: str
    seconds: float = 0.0
    action_seconds: float = 0.0
    action_ok: bool = True
    action_detail: str = ""
    slow_in_flight: int = 0
    requests: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    failed_per_host: dict[str, int] = field(default_factory=dict)
    failures_from_s: float | None = None
    failures_to_s: float | None = None
    fast: int = 0
    fast_p50_ms: float = 0.0
    fast_p99_ms: float = 0.0
    fast_max_ms: float = 0.0
    fast_over_1s: int = 0
    slow: int = 0
    slow_p99_ms: float = 0.0
    slow_max_ms: float = 0.0


def targets(fleet: Fleet) -> list[Target]:
    return [Target(h.name, h.address, _port(h.apache.listen)) for h in fleet.hosts]


def _port(listen: str) -> int:
    port = listen.rsplit(":", 1)[-1]
    return int(port) if port.isdigit() else 80


def run_window(scenario: str, fleet: Fleet, profile: Profile,
               action: Callable[[], T]) -> tuple[Window, T]:
    """Load for `lead` seconds, run `action`, keep the load for `tail` seconds (and until the
    window is at least `window` seconds long), stop, let requests in flight finish."""
    clock = Clock()
    load = stress.Stress(targets(fleet), fast_workers=2, slow_workers=2,
                         slow_ms=profile.slow_ms, max_requests=profile.max_requests,
                         fetcher=clock).start()
    began = time.monotonic()
    try:
        time.sleep(profile.lead)
        acted = time.monotonic()
        outcome = action()
        done = time.monotonic()
        time.sleep(max(profile.tail, profile.window - (done - began)))
    finally:
        load.stop()
    with load.lock:
        samples = {host: list(s) for host, s in load.samples.items()}
    window = summarize(scenario, samples, clock.spans, acted)
    window.seconds = round(time.monotonic() - began, 1)
    window.action_seconds = round(done - acted, 2)
    return window, outcome


def summarize(scenario: str, samples: dict[str, list[Sample]], spans: list[Span],
              acted: float) -> Window:
    """Counts and latencies from Stress's samples; timing from the recorded spans."""
    every = [s for per_host in samples.values() for s in per_host]
    w = Window(scenario, requests=len(every), failed=sum(not s.ok for s in every))
    w.reasons = dict(Counter(f"{s.kind}: {s.reason}" for s in every if not s.ok))
    w.failed_per_host = {h: sum(not s.ok for s in ss) for h, ss in samples.items()}
    _latencies(w, every)
    w.slow_in_flight = sum(1 for s in spans
                           if s.kind != "fast" and s.start < acted < s.end)
    failed_at = sorted(s.end - acted for s in spans if not s.ok)
    if failed_at:
        w.failures_from_s, w.failures_to_s = round(failed_at[0], 2), round(failed_at[-1], 2)
    return w


def _latencies(w: Window, every: list[Sample]) -> None:
    fast = [s.seconds * 1000 for s in every if s.kind == "fast" and s.ok]
    slow = [s.seconds * 1000 for s in every if s.kind == "slow" and s.ok]
    w.fast, w.slow = len(fast), len(slow)
    if fast:
        w.fast_p50_ms = round(statistics.median(fast), 1)
        w.fast_p99_ms = round(stress.percentile(fast, 99), 1)
        w.fast_max_ms = round(max(fast), 1)
        w.fast_over_1s = sum(ms > 1000 for ms in fast)
    if slow:
        w.slow_p99_ms = round(stress.percentile(slow, 99), 1)
        w.slow_max_ms = round(max(slow), 1)
