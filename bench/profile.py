"""How long and how big: the full run and `--quick`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run. Load windows are `lead` + action + `tail`, at least
    `window` seconds; `lead` is longer than a slow request so some are in flight.
    Every downtime scenario, and each tool of the peer section, runs `rounds` times.
    `fast_rate` caps each fast loop (requests/s; 0 = as fast as it goes)."""

    name: str
    lead: float
    tail: float
    window: float
    files: int
    scale: tuple[int, ...]
    status_runs: int
    rounds: int
    downtime_hosts: int = 3
    peer_hosts: int = 1
    slow_ms: int = 2000
    fast_rate: float = 100
    max_requests: int = 100_000


FULL = Profile("full", lead=4.0, tail=4.0, window=20.0, files=5000, scale=(1, 3, 6),
               status_runs=3, rounds=3)
QUICK = Profile("quick", lead=2.5, tail=2.0, window=8.0, files=2000, scale=(1, 3),
                status_runs=1, rounds=1)
