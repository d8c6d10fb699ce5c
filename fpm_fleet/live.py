"""The live display of a rollout on a terminal: one row per host and replica with its current
step and elapsed time, redrawn 8 times a second; failures and warnings are also printed as
lines. output.progress imports it only when it is shown."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from fpm_fleet import output
from fpm_fleet.core.events import Event


@dataclass
class _Row:
    step: str
    kind: str
    since: float
    detail: str = ""
    elapsed: float = 0.0
    steps: int = 0


class LiveObserver:
    """A live table: one row per host / replica with its current step and elapsed time."""

    def __init__(self, console: Console = output.err) -> None:
        self.console = console
        self.rows: dict[tuple[str, str], _Row] = {}
        self.lock = threading.Lock()
        self.live = Live(console=console, refresh_per_second=8, transient=False,
                         get_renderable=self.render)

    def event(self, ev: Event) -> None:
        output.log_event(ev)
        with self.lock:
            key = (ev.host, ev.target or "-")
            row = self.rows.setdefault(key, _Row(ev.step, ev.kind, time.monotonic()))
            if ev.kind == "start":
                row.step, row.kind, row.since = ev.step, "start", time.monotonic()
            else:
                row.step, row.kind, row.detail, row.elapsed = ev.step, ev.kind, ev.detail, \
                    ev.elapsed
                row.steps += ev.kind == "done"
            if ev.kind in ("fail", "warn"):
                self.console.print(output.line(ev))

    def render(self) -> Table:
        table = Table(expand=False, box=None, pad_edge=False)
        for col in ("host", "replica", "steps done", "step", "state", "time", "detail"):
            table.add_column(col)
        with self.lock:
            for (host, target), row in self.rows.items():
                running = time.monotonic() - row.since if row.kind == "start" else row.elapsed
                table.add_row(Text(host), Text(target), str(row.steps), Text(row.step),
                              Text(output.MARK[row.kind], style=output.STYLE[row.kind]),
                              f"{running:.2f}s", Text(row.detail[:60]))
        return table

    def __enter__(self) -> LiveObserver:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()
