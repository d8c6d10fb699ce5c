"""Connections opened ahead of their use, each in a thread of its own.

An SSH login is the slowest round trip of a run: the handshake, then the login session the
first command opens on the host (PAM, logind: ~30 ms on a Debian host, more when the
user's systemd manager has to start). Two moments leave time to spend on it:
- start-up: a task knows its first hosts as soon as the inventory is read, and still has
  to load the rollout machinery (about 0.1 s of imports, ARCHITECTURE.md, Start-up);
- the canary stage: the hosts after it connect while it rolls (remote/group.py).

Opening a connection changes nothing on a host: at most it runs `true` there. A host the
run never reaches stays untouched, and its connection is closed unused. A connection that
failed fails its host when the host's turn comes, as it would have then.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

from fpm_fleet.core.inventory import Host
from fpm_fleet.remote.runner import Runner

R = TypeVar("R", bound=Runner)


class Ahead(Generic[R]):
    """`open_` run for each of `hosts`, at most `at_once` at a time; `take` hands a host's
    runner over (waiting for its handshake to end), `close` closes what nobody took."""

    def __init__(self, hosts: Sequence[Host], open_: Callable[[Host], R],
                 at_once: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max(1, at_once),
                                        thread_name_prefix="fpm-fleet-connect")
        self._lock = threading.Lock()
        self._pending = {h.name: self._pool.submit(open_, h) for h in hosts}

    def take(self, host: Host) -> R | None:
        """The host's runner (None when none was opened ahead: the caller connects). Raises
        what opening it raised."""
        with self._lock:
            opening = self._pending.pop(host.name, None)
        return opening.result() if opening is not None else None

    def close(self) -> None:
        """Close what was opened and never taken, now or once its handshake ends."""
        with self._lock:
            left, self._pending = list(self._pending.values()), {}
        for opening in left:
            if not opening.cancel():
                opening.add_done_callback(_close_unused)
        self._pool.shutdown(wait=False)


def _close_unused(opening: Future[R]) -> None:
    if opening.exception() is None:
        close = getattr(opening.result(), "close", None)
        if close:
            close()
