"""Load windows: constant load on the fleet, one action in the middle, what clients saw.

The load is fpm_fleet.stress.Stress in-process (per host: 2 fast /ping.php loops, 2 slow
/sleep.php loops, 1 atomic.php loop), bounded in time (the window) and in count
(`max_requests` per host). Its fetcher hook is a Clock: it paces the fast loops and records
every request (start, end, failure reason), so a window shows how many slow requests were
in flight when the action began, when failures happened, and client-side latencies
without the pacing pauses.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from fpm_fleet import stress
from fpm_fleet.core.inventory import Fleet
from fpm_fleet.stress import Target

from .profile import Profile

T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    """One request as the client saw it (monotonic seconds); `reason` is empty when ok."""

    host: str
    kind: str
    start: float
    end: float
    reason: str = ""
    release: str = ""  # the release the answer names; "" when it names none or failed

    @property
    def ok(self) -> bool:
        return not self.reason

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000


def answered_by(kind: str, body: str) -> str:
    """The release a demo answer was read from: ping and sleep name it first, atomic.php in
    both of its parts (judged separately); "" for any other page."""
    if kind == "atomic":
        parts = dict(line.split(" ", 1) for line in body.splitlines() if " " in line)
        return parts.get("part1", "").strip() if stress.atomic_ok(body) else ""
    named = stress.release_of(body)
    return "" if named == "?" else named


def judge(kind: str, status: int, body: str) -> str:
    """Why an answer counts as failed, as fpm_fleet.stress judges it; a slow request cut short is
    counted in its own column (`slow_cut_short`, from its latency), not as failed."""
    return stress.verdict(kind, status, body, None)


class Clock:
    """A Stress fetcher for `loops` (the Stress runs the same ones: a request's kind is its
    loop's) that paces the fast loops and records every request as a Span.

    Pacing (at most `fast_rate` requests/s per fast loop) keeps the load constant instead
    of saturating the 2 CPUs that the fleet and the tool share; 0 means as fast as possible.
    """

    def __init__(self, loops: Sequence[stress.Loop], fast_rate: float = 0) -> None:
        self.loops = tuple(loops)
        self.kinds = {loop.path: loop.kind for loop in self.loops}  # a request's loop, by path
        self.interval = 1 / fast_rate if fast_rate > 0 else 0.0
        self.spans: list[Span] = []
        self.lock = threading.Lock()
        self.local = threading.local()

    def __call__(self, target: Target, path: str, timeout: float) -> tuple[int, str]:
        kind = self.kinds[path]
        if kind == "fast" and self.interval:
            self._pace()
        start, reason, release = time.monotonic(), "", ""
        try:
            status, body = stress.fetch(target, path, timeout)
            reason = judge(kind, status, body)
            release = "" if reason else answered_by(kind, body)
            return status, body
        except stress.FETCH_ERRORS as exc:
            reason = type(exc).__name__
            raise
        finally:
            span = Span(target.host, kind, start, time.monotonic(), reason, release)
            with self.lock:
                self.spans.append(span)

    def _pace(self) -> None:
        last = getattr(self.local, "last", 0.0)
        time.sleep(max(0.0, last + self.interval - time.monotonic()))
        self.local.last = time.monotonic()


@dataclass
class Window:
    """What the clients saw during one window (all hosts together)."""

    scenario: str
    round: int = 1
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
    slow_cut_short: int = 0
    time_to_new_s: float | None = None  # only for a window that rolls out a release


def targets(fleet: Fleet) -> list[Target]:
    """Every host, asked for the first pool's virtual host by name (as `fab stress` does)."""
    return stress.targets(fleet.hosts, fleet.pools[0])


def run_window(scenario: str, fleet: Fleet, profile: Profile, action: Callable[[], T],
               new_release: str = "") -> tuple[Window, T]:
    """Load for `lead` seconds, run `action`, keep the load for `tail` seconds (and until the
    window is at least `window` seconds long), stop, let requests in flight finish. With
    `new_release` (the action rolls it out), the window's time to new is measured."""
    clock = Clock(stress.demo_loops(fast=2, slow=2, slow_ms=profile.slow_ms, atomic=1),
                  profile.fast_rate)
    load = stress.Stress(targets(fleet), slow_ms=profile.slow_ms,
                         max_requests=profile.max_requests, fetcher=clock,
                         loops=clock.loops).start()
    began = time.monotonic()
    try:
        time.sleep(profile.lead)
        acted = time.monotonic()
        outcome = action()
        done = time.monotonic()
        time.sleep(max(profile.tail, profile.window - (done - began)))
    finally:
        load.stop()
    with clock.lock:
        spans = list(clock.spans)
    window = summarize(scenario, spans, acted, profile.slow_ms)
    window.seconds = round(time.monotonic() - began, 1)
    window.action_seconds = round(done - acted, 2)
    if new_release:
        window.time_to_new_s = time_to_new(spans, new_release, acted)
    return window, outcome


def time_to_new(spans: list[Span], release: str, since: float) -> float | None:
    """Seconds from `since` until every request started from then on answered from
    `release`: the start of its first answer after the last request started that did not
    (answered from another release, or failed). None when it never answered.

    Requests are taken by when they started: a slow request begun on the old release
    answers from it seconds later, rightly. Answers naming no release are left out."""
    others = [s.start for s in spans if not s.ok or (s.release and s.release != release)]
    last_other = max(others, default=float("-inf"))
    first_new = min((s.start for s in spans if s.ok and s.release == release
                     and s.start > last_other), default=None)
    return None if first_new is None else round(max(0.0, first_new - since), 2)


def summarize(scenario: str, spans: list[Span], acted: float, slow_ms: int) -> Window:
    """Counts, failure reasons and timing, latencies of the successful requests."""
    w = Window(scenario, requests=len(spans), failed=sum(not s.ok for s in spans))
    w.reasons = dict(Counter(f"{s.kind}: {s.reason}" for s in spans if not s.ok))
    w.failed_per_host = dict(Counter(s.host for s in spans if not s.ok))
    w.slow_in_flight = sum(1 for s in spans if s.kind != "fast" and s.start < acted < s.end)
    failed_at = sorted(s.end - acted for s in spans if not s.ok)
    if failed_at:
        w.failures_from_s, w.failures_to_s = round(failed_at[0], 2), round(failed_at[-1], 2)
    _latencies(w, spans, slow_ms)
    return w


def _latencies(w: Window, spans: list[Span], slow_ms: int) -> None:
    fast = [s.ms for s in spans if s.kind == "fast" and s.ok]
    slow = [s.ms for s in spans if s.kind == "slow" and s.ok]
    w.fast, w.slow = len(fast), len(slow)
    w.slow_cut_short = sum(ms < slow_ms * 0.95 for ms in slow)
    if fast:
        w.fast_p50_ms = round(statistics.median(fast), 1)
        w.fast_p99_ms = round(stress.percentile(fast, 99), 1)
        w.fast_max_ms = round(max(fast), 1)
        w.fast_over_1s = sum(ms > 1000 for ms in fast)
    if slow:
        w.slow_p99_ms = round(stress.percentile(slow, 99), 1)
        w.slow_max_ms = round(max(slow), 1)
