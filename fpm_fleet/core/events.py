"""Events the core reports upward; the output module (or a test) observes them.

The core never prints. A step is announced when it starts and when it ends, with its
duration, so the same rollout can drive a live display, plain CI lines, JSON or a test.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Event:
    kind: str  # "start", "done", "fail", "info", "warn"
    host: str
    step: str
    target: str = ""  # e.g. "www-1"; empty for host-wide steps
    detail: str = ""
    elapsed: float = 0.0


class Observer(Protocol):
    def event(self, ev: Event) -> None: ...


@dataclass
class StepHandle:
    """Lets a running step add detail to its closing event."""

    detail: str = ""


@contextmanager
def step(obs: Observer, host: str, name: str, target: str = "") -> Iterator[StepHandle]:
    handle = StepHandle()
    started = time.monotonic()
    obs.event(Event("start", host, name, target))
    try:
        yield handle
    except BaseException as exc:
        reason = str(exc) or type(exc).__name__
        obs.event(Event("fail", host, name, target, reason, time.monotonic() - started))
        raise
    obs.event(Event("done", host, name, target, handle.detail, time.monotonic() - started))
