"""Webhook notifications of deploys and rollbacks (`[notify]` in hosts.toml).

A run posts, to every webhook: started, one message per host (done, failed or reverted),
finished (release, previous, duration, hosts, who, result). A message is JSON, or with
`format = "slack"` a Slack-compatible `{"text": ...}`.

A webhook never fails a run, nor holds it up beyond `timeout` at its end: each has its own
thread and queue, so posting is only putting on a queue; each attempt is bounded by
`timeout`; a connection failure, a timeout, a 429 or a 5xx answer is retried `retries` times
(after 0.5 s, 1 s, ...); at the end the run waits at most `timeout` seconds for what is
still in flight, then gives up. What each webhook received is returned for the recap. A URL
is shown and logged only as its scheme, host and port (`redact.url_origin`): its path, query
and password may be a secret.

Message builders are pure; `Webhook` and `Notifier` do the sending, webhook_http.py the
POST itself.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fpm_fleet.core.errors import FleetError
from fpm_fleet.core.inventory import Host, Notify
from fpm_fleet.core.redact import url_origin
from fpm_fleet.releases.store import operator
from fpm_fleet.remote.group import GroupResult, Proven
from fpm_fleet.remote.runner import Runner
from fpm_fleet.rollout.deploy import PoolFailed, PoolOutcome

log = logging.getLogger("fpm_fleet.notify")
BACKOFF = 0.5  # seconds before the first retry, doubled for each next one
Send = Callable[[str, bytes, float], None]  # one POST of (url, body, timeout); raises if not 2xx


@dataclass(frozen=True)
class Message:
    """One notification: the JSON fields, and the line a Slack-compatible payload says."""

    fields: dict[str, Any]
    text: str


def body(message: Message, fmt: str) -> bytes:
    payload = {"text": message.text} if fmt == "slack" else message.fields
    return json.dumps(payload).encode()


# --- the messages (pure) -------------------------------------------------------------------

def started(action: str, release: str | None, hosts: Sequence[str], who: str,
            inventory: str) -> Message:
    fields = {"event": f"{action}.started", "action": action, "release": release,
              "hosts": list(hosts), "who": who, "inventory": inventory}
    what = f"{action} of {release}" if release else action
    return Message(fields, f"fpm-fleet: {what} started on {', '.join(hosts)} by {who}")


def _pools(outcomes: Sequence[PoolOutcome]) -> list[dict[str, Any]]:
    return [{"pool": p.pool, "before": p.before, "after": p.after or p.before,
             "reverted": p.reverted,
             "after_activate": p.after_activate.text if p.after_activate else None}
            for p in outcomes]


def host_result(outcomes: Sequence[PoolOutcome], error: Exception | None) -> str:
    if any(p.reverted for p in outcomes):
        return "reverted"
    return "failed" if error is not None else "done"


def host_done(action: str, host: str, outcomes: Sequence[PoolOutcome],
              error: Exception | None, seconds: float) -> Message:
    result = host_result(outcomes, error)
    fields = {"event": f"{action}.host", "action": action, "host": host, "result": result,
              "duration": round(seconds, 1), "pools": _pools(outcomes),
              "error": str(error) if error else None}
    moves = ", ".join(f"{p.pool} {p.before or '-'} -> {p.after or p.before or '-'}"
                      for p in outcomes)
    hooks = [f"{p.pool}: after_activate {p.after_activate.failed}" for p in outcomes
             if p.after_activate and p.after_activate.failed]
    text = f"fpm-fleet: {action} on {host} {result} in {seconds:.1f}s"
    text += f": {moves}" if moves else ""
    text += f" ({error})" if error else ""
    return Message(fields, text + "".join(f"; {h}" for h in hooks))


def _one(values: set[str | None]) -> str | None:
    """The value every host shares (None when they differ, or have none)."""
    return next(iter(values)) if len(values) == 1 else None


def finished(action: str, release: str | None, results: GroupResult[list[PoolOutcome]],
             seconds: float, who: str, result: str | None = None) -> Message:
    hosts, befores, afters = [], set(), set()
    for o in results:
        outcomes = list(o.error.outcomes if isinstance(o.error, PoolFailed) else o.value or [])
        befores |= {p.before for p in outcomes}
        afters |= {p.after or p.before for p in outcomes if o.ok}
        hosts.append({"host": o.host, "reached": o.reached, "duration": round(o.seconds, 1),
                      "result": host_result(outcomes, o.error) if o.reached else "untouched",
                      "pools": _pools(outcomes), "error": str(o.error) if o.error else None})
    result = result or ("ok" if results.ok else "failed")
    release = release or _one(afters)
    fields = {"event": f"{action}.finished", "action": action, "release": release,
              "previous": _one(befores), "duration": round(seconds, 1), "hosts": hosts,
              "who": who, "result": result}
    what = f"{action} of {release}" if release else action
    return Message(fields, f"fpm-fleet: {what} finished: {result} on {len(hosts)} host(s) in "
                           f"{seconds:.1f}s (previous {_one(befores) or 'mixed/none'}), by {who}")


# --- sending -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Delivery:
    """What one webhook received in a run (for the recap)."""

    webhook: str  # url_origin: never the path, query or password
    delivered: int
    failed: int  # given up after every retry
    abandoned: int  # still queued or in flight when the run stopped waiting
    error: str  # the last failure's reason

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.abandoned == 0


@dataclass
class Webhook:
    """One URL with its own sending thread: `put` never blocks."""

    url: str
    fmt: str
    timeout: float
    retries: int
    send: Send | None = None  # None: a real POST (webhook_http.post)
    delivered: int = 0
    failed: int = 0
    error: str = ""
    _queue: queue.Queue[Message] = field(default_factory=queue.Queue)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _pending: int = 0

    def __post_init__(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="fpm-fleet-notify").start()

    @property
    def label(self) -> str:
        return url_origin(self.url)

    def put(self, message: Message) -> None:
        with self._lock:
            self._pending += 1
        self._queue.put(message)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def _run(self) -> None:
        while True:
            message = self._queue.get()
            ok = self._deliver(body(message, self.fmt))
            with self._lock:
                self._pending -= 1
                self.delivered += ok
                self.failed += not ok

    def _deliver(self, data: bytes) -> bool:
        # urllib and http.client (5 ms) are loaded only by a run that posts, never when `fab`
        # starts: start-up is on the path of every deploy (ARCHITECTURE.md, Start-up)
        from fpm_fleet import webhook_http

        send = self.send or webhook_http.post
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(BACKOFF * 2 ** (attempt - 1))
            try:
                send(self.url, data, self.timeout)
                return True
            except Exception as exc:  # any failure of a webhook is reported, never raised
                self.error = webhook_http.why(exc, self.url, self.timeout)
                log.info("notify %s: attempt %d failed: %s", self.label, attempt + 1,
                         self.error)
                if not webhook_http.retryable(exc):
                    break
        return False

    def delivery(self) -> Delivery:
        with self._lock:
            return Delivery(self.label, self.delivered, self.failed, self._pending, self.error)


class Notifier:
    """The webhooks of one run (`action`: deploy or rollback, of `release` when every host
    goes to the same one). Without `[notify]` every method does nothing."""

    def __init__(self, config: Notify, action: str, release: str | None = None,
                 send: Send | None = None) -> None:
        self.action, self.release = action, release
        self.timeout = config.timeout
        self.who = operator()
        self.began = time.monotonic()
        self.hooks = [Webhook(url, config.format, config.timeout, config.retries, send)
                      for url in config.webhooks]

    def send(self, message: Message) -> None:
        for hook in self.hooks:
            hook.put(message)

    def start(self, hosts: Sequence[Host], inventory: str) -> None:
        self.began = time.monotonic()
        self.send(started(self.action, self.release, [h.name for h in hosts], self.who,
                          inventory))

    def finish(self, results: GroupResult[list[PoolOutcome]] | None) -> None:
        """The finished message; `results` None: the run was interrupted."""
        seconds = time.monotonic() - self.began
        if results is None:
            results, outcome = GroupResult(()), "interrupted"
        else:
            outcome = None  # ok or failed, from the results
        self.send(finished(self.action, self.release, results, seconds, self.who, outcome))

    def per_host(self, work: Callable[[Runner, Host, Proven], list[PoolOutcome]]
                 ) -> Callable[[Runner, Host, Proven], list[PoolOutcome]]:
        """`work` (one host's rollout) that also posts the host's result when it ends."""
        def wrapped(runner: Runner, host: Host, proven: Proven) -> list[PoolOutcome]:
            began = time.monotonic()
            try:
                value = work(runner, host, proven)
            except FleetError as exc:
                outcomes = exc.outcomes if isinstance(exc, PoolFailed) else ()
                self.send(host_done(self.action, host.name, outcomes, exc,
                                    time.monotonic() - began))
                raise
            self.send(host_done(self.action, host.name, value, None, time.monotonic() - began))
            return value
        return wrapped

    def close(self, wait: float | None = None) -> list[Delivery]:
        """Wait at most `wait` seconds (default: the attempt timeout) for messages still
        queued or in flight; then each webhook's record. Threads left sending are daemons:
        they never keep the process alive."""
        deadline = time.monotonic() + (self.timeout if wait is None else wait)
        while any(h.pending for h in self.hooks) and time.monotonic() < deadline:
            time.sleep(0.02)
        deliveries = [h.delivery() for h in self.hooks]
        for d in deliveries:
            log.info("notify %s: %d delivered, %d failed, %d abandoned%s", d.webhook,
                     d.delivered, d.failed, d.abandoned, f" ({d.error})" if d.error else "")
        return deliveries
