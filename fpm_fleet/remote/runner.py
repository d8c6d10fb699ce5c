"""The per-host command runner: what every operation on a host is given (as Invoke's
Runner runs one command, this runs commands on one host). SSHRunner (ssh.py) in real life,
Recorder (dryrun.py) for a dry run, a scripted fake in unit tests.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol, TypeVar

from fpm_fleet.core.errors import RemoteError, RemoteResult
from fpm_fleet.core.inventory import Host
from fpm_fleet.remote.command import Command, read_answer

T = TypeVar("T")


class Runner(Protocol):
    """Runs remote commands on one host, as the inventory's login user."""

    host: Host

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult: ...

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]: ...

    def ask(self, cmd: Command[T]) -> T: ...


def ask_by_running(runner: Runner, cmd: Command[T]) -> T:
    """Run `cmd` and read its answer: the one place a parser's complaint becomes the
    project's AnswerError (naming the host and the command)."""
    result = runner.run(cmd.text, cmd.what, check=False, timeout=cmd.timeout)
    if cmd.check and not result.ok:
        raise RemoteError(runner.host.name, cmd.what, result)
    return read_answer(runner.host.name, cmd, result)


class Interrupted(KeyboardInterrupt):
    """Raised in a host's thread at its next remote command once a parallel run is
    interrupted (only the main thread gets Ctrl-C / SIGTERM)."""


class Interruptible:
    """A runner that refuses its next command once `interrupt` is set, so every host of a
    parallel run stops at its next step; commands inside `shield()` (putting a replica back,
    releasing the lock) still run."""

    def __init__(self, inner: Runner, interrupt: threading.Event) -> None:
        self.inner, self.host, self.interrupt = inner, inner.host, interrupt
        self.shields = 0

    def _check(self, what: str) -> None:
        if self.interrupt.is_set() and not self.shields:
            raise Interrupted(f"{self.host.name}: interrupted before {what}")

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        self._check(what)
        return self.inner.run(command, what, check=check, timeout=timeout)

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]:
        self._check(what)
        return self.inner.stream(command, what, source, timeout=timeout)

    def ask(self, cmd: Command[T]) -> T:
        self._check(cmd.what)
        return self.inner.ask(cmd)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()

    @contextmanager
    def shield(self) -> Iterator[None]:
        self.shields += 1
        try:
            yield
        finally:
            self.shields -= 1


@contextmanager
def shielded(runner: Runner) -> Iterator[None]:
    """Run the block's commands even after an interrupt: the recovery of what it left."""
    if isinstance(runner, Interruptible):
        with runner.shield():
            yield
    else:
        yield
