"""A bounded load generator: request loops against every host, for any application.

It is how zero downtime is proven: every request is counted, every failure (connection
error, timeout, non-2xx, an atomic.php answer mixing releases, or a slow request whose sleep
was cut short) is kept with its reason. What is requested is a list of Loops: the demo app's
endpoints (`demo_loops`: ping.php, sleep.php, atomic.php) or any paths (`path_loops`), sent
with the pool's server_name as Host so name-based virtual hosts answer.
Bounded in time (`duration`) and in count (`max_requests` per host).
"""

from __future__ import annotations

import http.client
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from fpm_fleet.core.errors import UsageError
from fpm_fleet.core.inventory import Host, Pool

# What an answer's body is kept for: the release it names (the first words) and a failure's
# diagnosis. A real app's pages, kept whole for 200,000 requests, would be gigabytes.
BODY_KEPT = 200


@dataclass(frozen=True)
class Target:
    host: str
    address: str
    port: int = 80
    server_name: str | None = None  # sent as Host; None: the address (Apache's default vhost)


@dataclass(frozen=True)
class Loop:
    """One request repeated back to back by `workers` threads per target. Its kind decides
    how an answer is judged: "fast" (latency percentiles), "slow" (sleep.php, cut short?),
    "atomic" (atomic.php, one release?)."""

    kind: str
    path: str
    workers: int


@dataclass
class Sample:
    kind: str  # "fast", "slow", "atomic"
    seconds: float
    ok: bool
    reason: str = ""
    body: str = ""


@dataclass
class HostStats:
    host: str
    requests: int = 0
    failures: int = 0
    fast: int = 0
    slow: int = 0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    releases: dict[str, int] = field(default_factory=dict)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarize(host: str, samples: list[Sample]) -> HostStats:
    fast = [s.seconds * 1000 for s in samples if s.kind == "fast" and s.ok]
    stats = HostStats(host, requests=len(samples), failures=sum(not s.ok for s in samples),
                      fast=sum(s.kind == "fast" for s in samples),
                      slow=sum(s.kind != "fast" for s in samples))
    if fast:
        stats.p50_ms = round(statistics.median(fast), 1)
        stats.p99_ms = round(percentile(fast, 99), 1)
        stats.max_ms = round(max(fast), 1)
    stats.reasons = dict(Counter(s.reason for s in samples if not s.ok))
    # only answers that name a release (the demo app's): any other app's pages name none
    named = (release_of(s.body) for s in samples if s.ok and s.body)
    stats.releases = dict(Counter(r for r in named if r != "?"))
    return stats


DEMO_ANSWER = re.compile(r"(?:pong|slept \d+ms) (\S+)(?: |$)")


def release_of(body: str) -> str:
    """The release named by a demo answer ("pong v1 pid=..", "slept 2000ms v1 .."); "?"
    for any other page (another app's "slept 10 ms in release v2" names none for us)."""
    match = DEMO_ANSWER.match(body)
    return match.group(1) if match else "?"


def atomic_ok(body: str) -> bool:
    """atomic.php prints `part1 R` and `part2 R`: both parts must name one release."""
    parts = dict(line.split(" ", 1) for line in body.splitlines() if " " in line)
    return "part1" in parts and parts.get("part1") == parts.get("part2")


def cut_short(body: str, asked_ms: int) -> bool:
    """sleep.php answers `slept Nms ...`: a 200 after much less than asked means the sleep was
    interrupted (a reload's SIGQUIT): work not done, counted as a failure."""
    words = body.split()
    if words[:1] != ["slept"] or len(words) < 2 or not words[1].removesuffix("ms").isdigit():
        return False
    return int(words[1].removesuffix("ms")) < 0.95 * asked_ms


def targets(hosts: Iterable[Host], pool: Pool | None = None) -> list[Target]:
    """One load target per host: its address and the port of its public virtual hosts; with
    a pool, requests name its server_name, as a browser would."""
    name = pool.server_name if pool else None
    return [Target(h.name, h.address, h.web_server.port, name) for h in hosts]


def demo_loops(fast: int = 2, slow: int = 2, slow_ms: int = 2000, atomic: int = 1
               ) -> tuple[Loop, ...]:
    """The demo app's endpoints: ping.php, sleep.php?ms=slow_ms, and atomic.php, whose two
    includes around a sleep of slow_ms/2 must name one release."""
    return (Loop("fast", "/ping.php", fast), Loop("slow", f"/sleep.php?ms={slow_ms}", slow),
            Loop("atomic", f"/atomic.php?ms={max(1, slow_ms // 2)}", atomic))


def path_loops(paths: Sequence[str], workers: int, atomic: bool = False,
               atomic_ms: int = 1000) -> tuple[Loop, ...]:
    """Any app: each path by `workers` loops per host (default: the site's root); the demo
    app's atomic.php (mixed-release detection) only when asked for."""
    loops = [Loop("fast", request_path(p), workers) for p in (paths or ["/"])]
    if atomic:
        loops.append(Loop("atomic", f"/atomic.php?ms={atomic_ms}", 1))
    return tuple(loops)


def request_path(path: str) -> str:
    """A path as sent on the request line: absolute, with no space or control character."""
    if not path.startswith("/") or any(c.isspace() or ord(c) < 32 for c in path):
        raise UsageError(f"--path {path!r}: must be a URL path starting with '/', without "
                         "spaces (encode them as %20)")
    return path


def request_headers(target: Target) -> dict[str, str]:
    """Host names the pool's virtual host (with the port when it is not 80)."""
    headers = {"Connection": "close"}
    if target.server_name:
        port = "" if target.port == 80 else f":{target.port}"
        headers["Host"] = f"{target.server_name}{port}"
    return headers


def verdict(kind: str, status: int, body: str, slow_ms: int | None) -> str:
    """Why an answer counts as failed, or "" when it is fine. Without slow_ms a slow request
    that was cut short is not judged here (the benchmarks count it in a column of its own)."""
    if not 200 <= status < 300:
        return f"HTTP {status}"
    if kind == "atomic" and not atomic_ok(body):
        return "mixed releases"
    if kind == "slow" and slow_ms is not None and cut_short(body, slow_ms):
        return "cut short"
    return ""


def fetch(target: Target, path: str, timeout: float) -> tuple[int, str]:
    conn = http.client.HTTPConnection(target.address, target.port, timeout=timeout)
    try:
        conn.request("GET", path, headers=request_headers(target))
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


Fetcher = Callable[[Target, str, float], tuple[int, str]]
# What a fetcher raises when a request got no answer (counted as failed, named by its type)
FETCH_ERRORS = (OSError, http.client.HTTPException)


class Stress:
    """Load against a set of targets on background threads; `stop()` returns the stats."""

    def __init__(self, targets: list[Target], fast_workers: int = 2, slow_workers: int = 2,
                 slow_ms: int = 2000, atomic_workers: int = 1, max_requests: int = 200_000,
                 fetcher: Fetcher = fetch, loops: Sequence[Loop] | None = None) -> None:
        """Without `loops`, the demo app's endpoints (the worker counts choose how many)."""
        self.targets = targets
        self.plan = tuple(loops) if loops is not None else demo_loops(
            fast_workers, slow_workers, slow_ms, atomic_workers)
        self.timeout = slow_ms / 1000 + 30
        self.slow_ms = slow_ms
        self.max_requests = max_requests
        self.fetcher = fetcher
        self.samples: dict[str, list[Sample]] = {t.host: [] for t in targets}
        self.issued: dict[str, int] = {t.host: 0 for t in targets}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> Stress:
        for target in self.targets:
            for loop in self.plan:
                for _ in range(loop.workers):
                    t = threading.Thread(target=self._loop, args=(target, loop.kind, loop.path),
                                         daemon=True)
                    t.start()
                    self.threads.append(t)
        return self

    def _loop(self, target: Target, kind: str, path: str) -> None:
        while not self.stopping.is_set():
            with self.lock:  # reserve the slot, so the bound holds with many workers
                if self.issued[target.host] >= self.max_requests:
                    return
                self.issued[target.host] += 1
            sample = self._one(target, kind, path)
            with self.lock:
                self.samples[target.host].append(sample)

    def _one(self, target: Target, kind: str, path: str) -> Sample:
        started = time.monotonic()
        try:
            status, body = self.fetcher(target, path, self.timeout)
        except FETCH_ERRORS as exc:
            return Sample(kind, time.monotonic() - started, False, type(exc).__name__)
        elapsed = time.monotonic() - started
        reason = verdict(kind, status, body, self.slow_ms)
        kept = body[:BODY_KEPT]
        if reason:
            return Sample(kind, elapsed, False, reason, kept if status < 300 else "")
        return Sample(kind, elapsed, True, body=kept if kind != "atomic" else "")

    def stop(self) -> list[HostStats]:
        """Stop issuing requests, let those in flight finish, and summarize per host."""
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=self.timeout + 5)
        with self.lock:
            return [summarize(t.host, list(self.samples[t.host])) for t in self.targets]


def run(targets: list[Target], duration: float, fast_workers: int = 2, slow_workers: int = 2,
        slow_ms: int = 2000, max_requests: int = 200_000,
        loops: Sequence[Loop] | None = None) -> list[HostStats]:
    """Load for `duration` seconds (bounded), then the per-host stats."""
    load = Stress(targets, fast_workers=fast_workers, slow_workers=slow_workers,
                  slow_ms=slow_ms, max_requests=max_requests, loops=loops).start()
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline and any(t.is_alive() for t in load.threads):
        time.sleep(0.1)
    return load.stop()
