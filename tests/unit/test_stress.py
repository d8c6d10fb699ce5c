"""fpm_fleet.stress: the bounded load generator that proves zero downtime.

The fake fetchers answer in microseconds, so each Stress run takes well under a second.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from fpm_fleet import stress
from fpm_fleet.core.errors import UsageError
from fpm_fleet.stress import Sample, Target

WEB1 = Target("web1", "198.18.0.11")
WEB2 = Target("web2", "198.18.0.12", 8080)


# --- pure helpers ------------------------------------------------------------------------------

def test_percentile_picks_the_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert stress.percentile(values, 50) == 51.0
    assert stress.percentile(values, 99) == 99.0
    assert stress.percentile(values, 100) == 100.0
    assert stress.percentile(values, 0) == 1.0
    assert stress.percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_percentile_of_nothing_is_zero_and_of_one_value_is_that_value():
    assert stress.percentile([], 99) == 0.0
    assert stress.percentile([7.5], 99) == 7.5


def test_release_of_reads_ping_and_sleep_answers():
    assert stress.release_of("pong v1 pid=123") == "v1"
    assert stress.release_of("slept 2000ms v2 pid=9") == "v2"
    assert stress.release_of("pong") == "?"
    assert stress.release_of("") == "?"
    assert stress.release_of("<html>error</html>") == "?"


@pytest.mark.parametrize(("body", "ok"), [
    ("part1 v1\npart2 v1\n", True),
    ("part1 v1\npart2 v2\n", False),
    ("part1 v1\n", False),
    ("part2 v1\n", False),
    ("", False),
    ("part1 v 1\npart2 v 1", True),
])
def test_atomic_ok_needs_both_parts_naming_one_release(body, ok):
    assert stress.atomic_ok(body) is ok


def test_summarize_counts_kinds_failures_reasons_and_releases():
    samples = [Sample("fast", s / 1000, True, body="pong v1 pid=1") for s in range(1, 101)]
    samples += [Sample("fast", 5.0, False, "HTTP 503"), Sample("fast", 0.1, False, "HTTP 503"),
                Sample("slow", 2.0, True, body="slept 2000ms v2 pid=3"),
                Sample("slow", 0.2, False, "ConnectionResetError"),
                Sample("atomic", 1.0, False, "mixed releases", "part1 v1\npart2 v2"),
                Sample("atomic", 1.0, True)]
    stats = stress.summarize("web1", samples)
    assert (stats.host, stats.requests, stats.failures) == ("web1", 106, 4)
    assert (stats.fast, stats.slow) == (102, 4)
    assert stats.reasons == {"HTTP 503": 2, "ConnectionResetError": 1, "mixed releases": 1}
    assert stats.releases == {"v1": 100, "v2": 1}
    # latency only of successful fast requests: the 5 s failure does not count
    assert (stats.p50_ms, stats.p99_ms, stats.max_ms) == (50.5, 99.0, 100.0)


def test_summarize_of_nothing_is_all_zero():
    stats = stress.summarize("web1", [])
    assert (stats.requests, stats.failures, stats.p50_ms, stats.max_ms) == (0, 0, 0.0, 0.0)
    assert stats.reasons == {} and stats.releases == {}


# --- the load generator with a fake fetcher ----------------------------------------------------

class Flaky:
    """Per host: every 4th ping is refused, every 3rd sleep answers 503, every 2nd atomic
    answer mixes releases (counted per host and path, so thread interleaving cannot matter)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[tuple[str, str]] = Counter()
        self.delay = delay
        self.calls: list[tuple[str, str, float]] = []

    def __call__(self, target: Target, path: str, timeout: float) -> tuple[int, str]:
        kind = path.split("?")[0]
        with self.lock:
            self.counts[target.host, kind] += 1
            i = self.counts[target.host, kind]
            self.calls.append((target.host, path, timeout))
        if self.delay:
            time.sleep(self.delay)
        if kind == "/ping.php":
            if i % 4 == 0:
                raise ConnectionRefusedError(111, "Connection refused")
            return 200, "pong v1 pid=1"
        if kind == "/sleep.php":
            return (503, "Service Unavailable") if i % 3 == 0 else (200, "slept 10ms v1 pid=2")
        return 200, "part1 v1\npart2 v2\n" if i % 2 == 0 else "part1 v1\npart2 v1\n"


def test_failures_are_counted_with_their_reasons_and_the_run_is_bounded():
    fetcher = Flaky(delay=0.001)  # lets every worker thread get its turn
    load = stress.Stress([WEB1, WEB2], slow_ms=10, max_requests=200, fetcher=fetcher).start()
    for t in load.threads:
        t.join(timeout=5)
    assert not any(t.is_alive() for t in load.threads)  # stopped by the bound alone
    stats = {s.host: s for s in load.stop()}
    assert set(stats) == {"web1", "web2"}
    total = sum(s.requests for s in stats.values())
    assert total == len(fetcher.calls)
    for s in stats.values():
        assert s.requests >= 200
        assert s.failures == sum(s.reasons.values()) > 0
        assert set(s.reasons) <= {"ConnectionRefusedError", "HTTP 503", "mixed releases"}
        assert s.fast > 0 and s.slow > 0
        assert s.releases and set(s.releases) == {"v1"}
    calls = Counter((host, path.split("?")[0]) for host, path, _ in fetcher.calls)
    for host, s in stats.items():
        assert s.reasons["ConnectionRefusedError"] == calls[host, "/ping.php"] // 4
        assert s.reasons["HTTP 503"] == calls[host, "/sleep.php"] // 3
        assert s.reasons["mixed releases"] == calls[host, "/atomic.php"] // 2


def test_requests_go_to_ping_sleep_and_atomic_with_a_timeout_above_the_slow_request():
    fetcher = Flaky()
    load = stress.Stress([WEB1], fast_workers=1, slow_workers=1, atomic_workers=1,
                         slow_ms=3000, max_requests=30, fetcher=fetcher).start()
    load.stop()
    paths = {p for _, p, _ in fetcher.calls}
    assert paths <= {"/ping.php", "/sleep.php?ms=3000", "/atomic.php?ms=1500"}
    assert "/ping.php" in paths
    assert {t for _, _, t in fetcher.calls} == {33.0}


def test_stop_returns_promptly_and_no_request_starts_after_it():
    fetcher = Flaky(delay=0.005)
    load = stress.Stress([WEB1], slow_ms=10, fetcher=fetcher).start()
    time.sleep(0.1)
    started = time.monotonic()
    stats = load.stop()
    assert time.monotonic() - started < 1
    assert not any(t.is_alive() for t in load.threads)
    assert stats[0].requests > 0
    calls = len(fetcher.calls)
    time.sleep(0.05)
    assert len(fetcher.calls) == calls


class DemoApp(BaseHTTPRequestHandler):
    """The three demo endpoints, answering like the sandbox app does."""

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        body = {"/ping.php": "pong v1 pid=1", "/sleep.php": "slept 10ms v1 pid=2",
                "/atomic.php": "part1 v1\npart2 v1\n"}.get(path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write((body or "not found").encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def demo_app() -> Iterator[Target]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), DemoApp)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Target("local", "127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_returns_status_and_body_of_a_real_http_answer(demo_app):
    assert stress.fetch(demo_app, "/ping.php", 5) == (200, "pong v1 pid=1")
    assert stress.fetch(demo_app, "/nope", 5) == (404, "not found")


def test_a_refused_connection_is_a_failure_named_by_its_exception():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = Target("gone", "127.0.0.1", s.getsockname()[1])  # bound, not listening
        load = stress.Stress([closed], fast_workers=1, slow_workers=0, atomic_workers=0,
                             max_requests=3).start()
        for t in load.threads:
            t.join(timeout=5)
        stats = load.stop()[0]
    assert (stats.requests, stats.failures) == (3, 3)
    assert stats.reasons == {"ConnectionRefusedError": 3}


def test_run_loads_every_endpoint_for_its_duration_then_stops(demo_app):
    started = time.monotonic()
    stats = stress.run([demo_app], 0.3, fast_workers=1, slow_workers=1, slow_ms=10)
    assert 0.25 < time.monotonic() - started < 2
    (s,) = stats
    assert s.requests > 0 and s.failures == 0
    assert s.fast > 0 and s.slow > 0
    # ping and sleep answers name their release; atomic answers are only checked for mixing
    assert list(s.releases) == ["v1"]
    assert s.fast < s.releases["v1"] < s.requests


def test_max_requests_is_never_exceeded_even_with_workers_in_flight():
    barrier = threading.Barrier(5)

    def together(target: Target, path: str, timeout: float) -> tuple[int, str]:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=0.5)
        return 200, "part1 v1\npart2 v1" if path.startswith("/atomic") else "pong v1"

    load = stress.Stress([WEB1], fast_workers=2, slow_workers=2, atomic_workers=1,
                         slow_ms=10, max_requests=1, fetcher=together).start()
    for t in load.threads:
        t.join(timeout=5)
    assert load.stop()[0].requests == 1


def test_a_slow_answer_after_much_less_than_asked_is_cut_short():
    from fpm_fleet.stress import cut_short
    assert cut_short("slept 120ms v1 pid=7 asked=2000ms", 2000)
    assert not cut_short("slept 2001ms v1 pid=7 asked=2000ms", 2000)
    assert not cut_short("pong v1 pid=7", 2000)


def test_a_cut_short_slow_request_counts_as_a_failure():
    def fetcher(target, path, timeout):
        return 200, "slept 10ms v1 pid=1 asked=2000ms\n" if "sleep" in path else "pong v1\n"
    load = stress.Stress([stress.Target("h", "127.0.0.1")], fast_workers=0, slow_workers=1,
                         atomic_workers=0, max_requests=3, fetcher=fetcher).start()
    load.threads[0].join(timeout=5)  # stops by itself after max_requests
    stats = load.stop()
    assert stats[0].failures == stats[0].requests == 3
    assert stats[0].reasons == {"cut short": 3}


# --- what is requested, for any application ----------------------------------------------------

def test_without_paths_the_site_root_is_requested_and_atomic_php_is_not():
    assert stress.path_loops([], workers=3) == (stress.Loop("fast", "/", 3),)


def test_each_path_gets_its_own_loops_in_the_order_given():
    loops = stress.path_loops(["/login", "/api/items?page=2"], workers=2)
    assert loops == (stress.Loop("fast", "/login", 2), stress.Loop("fast", "/api/items?page=2", 2))


def test_atomic_php_is_requested_only_when_asked_for():
    loops = stress.path_loops(["/"], workers=2, atomic=True)
    assert loops[-1] == stress.Loop("atomic", "/atomic.php?ms=1000", 1)
    assert all("atomic" not in lp.path for lp in stress.path_loops(["/"], workers=2))


@pytest.mark.parametrize("path", ["login", "", "/a b", "/a\nb", "http://x/"])
def test_a_path_that_cannot_go_on_a_request_line_is_refused(path):
    with pytest.raises(UsageError, match="must be a URL path starting with '/'"):
        stress.path_loops([path], workers=1)


def test_the_demo_loops_are_ping_sleep_and_atomic():
    assert stress.demo_loops(fast=1, slow=2, slow_ms=3000, atomic=1) == (
        stress.Loop("fast", "/ping.php", 1), stress.Loop("slow", "/sleep.php?ms=3000", 2),
        stress.Loop("atomic", "/atomic.php?ms=1500", 1))


@pytest.mark.parametrize(("target", "host"), [
    (Target("web1", "198.18.0.11", 80, "shop.example.com"), "shop.example.com"),
    (Target("web1", "198.18.0.11", 8088, "shop.example.com"), "shop.example.com:8088"),
])
def test_the_pools_server_name_is_the_host_header_with_a_non_default_port(target, host):
    assert stress.request_headers(target) == {"Connection": "close", "Host": host}


def test_without_a_server_name_http_client_names_the_address():
    assert stress.request_headers(WEB1) == {"Connection": "close"}


def test_targets_of_a_pool_carry_its_server_name(inventory_data, build_fleet):
    inventory_data["pools"]["www"]["server_name"] = "shop.example.com"
    inventory_data["hosts"][1]["apache"] = {"listen": "198.18.0.12:8088"}
    fleet = build_fleet(inventory_data)
    assert stress.targets(fleet.hosts, fleet.pool("www")) == [
        Target("web1", "198.18.0.11", 80, "shop.example.com"),
        Target("web2", "198.18.0.12", 8088, "shop.example.com")]


class Recording(BaseHTTPRequestHandler):
    """Answers 200 to anything and records (path, Host header) of each request."""

    seen: ClassVar[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"<html>a page that names no release</html>")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def any_app() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    seen: ClassVar[list[tuple[str, str]]] = []
    handler = type("Handler", (Recording,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_load_on_any_app_requests_only_its_paths_with_the_pools_host(any_app):
    port, seen = any_app
    target = Target("local", "127.0.0.1", port, "shop.example.com")
    (s,) = stress.run([target], 0.2, max_requests=20,
                      loops=stress.path_loops(["/", "/login?next=%2F"], workers=1))
    assert s.requests == len(seen) > 0 and s.failures == 0
    assert {path for path, _ in seen} <= {"/", "/login?next=%2F"}
    assert {host for _, host in seen} == {f"shop.example.com:{port}"}
    assert s.releases == {}  # its pages name no release: no "?" column of every request


def test_only_the_start_of_an_answer_is_kept():
    load = stress.Stress([WEB1], max_requests=3, fetcher=lambda t, p, s: (200, "x" * 10**6),
                         loops=[stress.Loop("fast", "/", 1)]).start()
    load.threads[0].join(timeout=5)
    load.stop()
    assert [len(s.body) for s in load.samples["web1"]] == [stress.BODY_KEPT] * 3


def test_release_of_reads_only_the_demo_apps_answers():
    assert stress.release_of("pong v7 pid=42\n") == "v7"
    assert stress.release_of("slept 2000ms v7 pid=42 asked=2000ms\n") == "v7"
    assert stress.release_of("slept 10 ms in release v2\n") == "?"
    assert stress.release_of("<html>pong</html>") == "?"
