"""A remote command paired with the function that reads its answer.

Every probe of a host is a `Command[T]`: the shell text, what it is for (the log and error
messages), the parser that turns its output into a T, and whether it changes the host. The
text and the parser live side by side in the module that knows the answer's format; a
runner (runner.py) executes it, and `read_answer` turns a parser's ValueError into the
project's AnswerError in this one place. Several read-only commands can share one round
trip with `together`.

A dry run (dryrun.py) runs the read-only commands for real and records the others; for a
check of something the dry run did not really change (a replica "now idle", "now pinned"),
`assume` gives the answer the plan goes on with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from fpm_fleet.core.errors import AnswerError, RemoteResult
from fpm_fleet.remote import shell

T = TypeVar("T")


@dataclass(frozen=True)
class Command(Generic[T]):
    """One remote command and how to read what it printed."""

    text: str
    what: str
    read: Callable[[RemoteResult], T]
    changes: bool = False  # False: a read-only probe, safe to run in a dry run
    check: bool = True  # a non-zero exit raises RemoteError
    timeout: float | None = None  # None: the host's command_timeout
    assume: Callable[[], T] | None = field(default=None, compare=False)
    shown: str | None = None  # the text to show for it, when `text` may hold a secret

    @property
    def display(self) -> str:
        return self.text if self.shown is None else self.shown


def read_answer(host: str, cmd: Command[T], result: RemoteResult) -> T:
    """The parsed answer; an answer the parser cannot read is the host's AnswerError."""
    try:
        return cmd.read(result)
    except ValueError as exc:
        raise AnswerError(f"{host}: {cmd.what}: {exc}") from None


def stdout(result: RemoteResult) -> str:
    return result.stdout


def exited_ok(result: RemoteResult) -> bool:
    return result.ok


def action(text: str, what: str, *, timeout: float | None = None,
           shown: str | None = None) -> Command[RemoteResult]:
    """A command that changes the host and whose output nobody reads (`shown`: how a dry run
    prints it, e.g. a hook with its secrets masked)."""
    return Command(text, what, lambda r: r, changes=True, timeout=timeout, shown=shown)


def probe(text: str, what: str, read: Callable[[RemoteResult], T], *,
          check: bool = True) -> Command[T]:
    """A read-only command."""
    return Command(text, what, read, check=check)


def together(what: str, parts: Sequence[Command[Any]],
             at_once_from: int | None = None) -> Command[tuple[Any, ...]]:
    """Read-only commands in one round trip: each part's output and exit status are
    separated on the host (shell.sections) and read by the part's own parser (a part's
    `check` does not apply: its parser sees its exit status). From part `at_once_from` on,
    the parts run at the same time (shell.sections)."""
    if any(p.changes for p in parts):
        raise ValueError("only read-only commands can share a round trip")
    names = [str(i) for i in range(len(parts))]

    def read(result: RemoteResult) -> tuple[Any, ...]:
        found = shell.split_sections(result.stdout)
        answers = []
        for name, part in zip(names, parts, strict=True):
            out, code = found.get(name, ("", -1))
            # stderr is not split by part: a failing part's reader gets all of it
            answers.append(part.read(RemoteResult(part.text, code, out,
                                                  result.stderr if code else "")))
        return tuple(answers)

    return Command(shell.sections(list(zip(names, (p.text for p in parts), strict=True)),
                                  at_once_from), what, read, check=False)
