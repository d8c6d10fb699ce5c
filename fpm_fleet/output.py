"""All output: rich progress on stderr (live on a TTY, plain lines otherwise), data on stdout
(tables, --json), remote output only in the log file whose path is printed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpm_fleet.core.events import Event, Observer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    err: Console
    out: Console

log = logging.getLogger("fpm_fleet")


def __getattr__(name: str) -> Console:
    """`err` and `out`, rich's consoles, made at their first use: rich costs 40 ms to load,
    which a run whose stderr is no terminal (CI, a pipe) spends after its rollout if at
    all (start-up: ARCHITECTURE.md)."""
    if name not in ("err", "out"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from rich.console import Console

    stream = sys.stderr if name == "err" else sys.stdout
    # wide enough for the status table when output goes to a pipe or a CI log
    made = Console(stderr=name == "err", highlight=False,
                   width=None if stream.isatty() else 160)
    globals()[name] = made
    return made


def console(name: str = "err") -> Console:
    """`err` or `out`, made now if not yet."""
    made = globals().get(name)
    return made if made is not None else __getattr__(name)


def plain_stderr() -> bool:
    """Whether rich would write stderr without any style: no terminal, and none of the
    variables that make rich style a pipe all the same."""
    if "err" in globals():
        return not console("err").is_terminal
    forced = os.environ.get("TTY_COMPATIBLE") == "1" or os.environ.get("FORCE_COLOR")
    return not forced and not sys.stderr.isatty()

STYLE = {"start": "yellow", "done": "green", "fail": "bold red", "info": "cyan",
         "warn": "bold yellow"}
MARK = {"start": "…", "done": "ok", "fail": "FAILED", "info": "-", "warn": "!"}


def start_log(log_dir: str, command: str) -> Path:
    """Every remote command and its output go to one file per invocation."""
    directory = Path(log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"fpm-fleet-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    # The log holds every remote command and its output (hook commands included): only the
    # operator may read it. Created 0600 whatever the umask, before anything is written.
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    os.chmod(path, 0o600)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    root = logging.getLogger("fpm_fleet")
    root.handlers = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False
    # paramiko's own warnings and handshake tracebacks belong in the log, not on the terminal
    noisy = logging.getLogger("paramiko")
    noisy.handlers = [handler]
    noisy.setLevel(logging.WARNING)
    noisy.propagate = False
    log.info("command: %s", command)
    return path


def line_parts(ev: Event) -> list[tuple[str, str]]:
    """A step's line as (text, style) parts: `[h1] www upload ok 0.064s  7 sent, ...`."""
    where = f"[{ev.host}]" + (f" {ev.target}" if ev.target else "")
    parts = [(f"{where} {ev.step} ", ""), (MARK[ev.kind], STYLE[ev.kind])]
    if ev.kind in ("done", "fail"):
        parts.append((f" {ev.elapsed:.3f}s", ""))
    if ev.detail:
        parts.append((f"  {ev.detail}", "dim" if ev.kind == "done" else ""))
    return parts


def line(ev: Event) -> Text:
    from rich.text import Text

    text = Text()
    for part, style in line_parts(ev):
        text.append(part, style=style)
    return text


def log_event(ev: Event) -> None:
    log.info("event %s %s %s %s %.3f %s", ev.kind, ev.host, ev.target, ev.step, ev.elapsed,
             ev.detail)


class PlainObserver:
    """One line per finished step: for CI logs and pipes (styled on a terminal, --plain)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def event(self, ev: Event) -> None:
        log_event(ev)
        if ev.kind == "start":
            return
        with self.lock:
            if plain_stderr():
                _write_err("".join(part for part, _ in line_parts(ev)))
            else:
                console("err").print(line(ev))


def _write_err(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


@contextmanager
def progress(plain: bool = False) -> Iterator[Observer]:
    """A live display on a TTY outside CI, plain lines otherwise."""
    if plain or plain_stderr() or os.environ.get("CI"):
        yield PlainObserver()
        return
    # rich.live and rich.table (11 ms) only for a live display: a plain run (CI, a pipe,
    # --plain) reaches its first host without them (start-up: ARCHITECTURE.md)
    from fpm_fleet.live import LiveObserver
    with LiveObserver() as live:
        yield live


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Table:
    from rich.table import Table  # recaps come after the rollout: not at start-up
    from rich.text import Text
    t = Table(title=title, title_justify="left")
    for col in columns:
        t.add_column(col)
    for row in rows:
        # Text, never str: a cell holds remote text (paths, errors), which rich would
        # otherwise read as markup (`[red]`, or `[/x]`, which even raises)
        t.add_row(*[c if isinstance(c, Text) else Text(str(c)) for c in row])
    return t


def ok_text(ok: bool, yes: str = "ok", no: str = "FAIL") -> Text:
    from rich.text import Text

    return Text(yes, style="green") if ok else Text(no, style="bold red")


def print_json(items: Any) -> None:
    def convert(value: Any) -> Any:
        if is_dataclass(value) and not isinstance(value, type):
            return asdict(value)
        raise TypeError(type(value).__name__)
    sys.stdout.write(json.dumps(items, default=convert, indent=2) + "\n")
    sys.stdout.flush()


def show(*renderables: Any) -> None:
    from rich.console import Group

    console("out").print(Group(*renderables))


def note(message: str, style: str = "") -> None:
    """One message on stderr, never cut into lines: a log path must stay one path."""
    if plain_stderr():
        _write_err(message)
        return
    from rich.text import Text

    console("err").print(Text(message, style=style), soft_wrap=True)
