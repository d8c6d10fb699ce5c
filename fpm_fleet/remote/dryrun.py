"""The dry run: the real task code driven by a runner that records instead of changing.

Read-only probes run for real (so the plan starts from the hosts' real state: which
release is current, which replicas serve, what an upload would send). A command that
changes the host is recorded, not run, and answers as if it succeeded; a check of what
such a command would have done answers what its Command assumes (e.g. "now idle", "now
pinned to the new release"). The plan is every command in order, as the login user runs it
(with the `sudo -n` that the root ones carry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import IO, TypeVar

from fpm_fleet.core.errors import RemoteResult
from fpm_fleet.core.events import Event, Observer
from fpm_fleet.core.inventory import Host
from fpm_fleet.remote.command import Command, read_answer
from fpm_fleet.remote.runner import Runner

T = TypeVar("T")


@dataclass(frozen=True)
class Planned:
    """One line of the plan: `kind` is "change" (a command recorded, not run), "check" (its
    answer was assumed), "read" (run for real) or "step" (a step of the rollout begins)."""

    host: str
    user: str
    kind: str
    what: str
    command: str


@dataclass
class Recorder:
    """A runner for dry runs: reads through `reader` (a real runner; None: nothing is read,
    every probe answers empty), records the rest in `plan`."""

    host: Host
    reader: Runner | None = None
    plan: list[Planned] = field(default_factory=list)

    def _note(self, kind: str, what: str, command: str) -> None:
        self.plan.append(Planned(self.host.name, self.host.user, kind, what, command))

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        self._note("change", what, command)
        return RemoteResult(command, 0, "", "")

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]:
        self._note("change", what, command + "   < (stdin: the data it would send)")
        return RemoteResult(command, 0, "", ""), 0

    def ask(self, cmd: Command[T]) -> T:
        empty = RemoteResult(cmd.text, 0, "", "")
        if cmd.changes:
            self._note("change", cmd.what, cmd.display)
            return cmd.assume() if cmd.assume else read_answer(self.host.name, cmd, empty)
        if cmd.assume is not None:
            self._note("check", cmd.what, cmd.display)
            return cmd.assume()
        self._note("read", cmd.what, cmd.display)
        return self.reader.ask(cmd) if self.reader else read_answer(self.host.name, cmd, empty)

    def close(self) -> None:
        close = getattr(self.reader, "close", None)
        if close:
            close()

    def step(self, name: str, target: str) -> None:
        self._note("step", f"{name} {target}".strip(), "")


@dataclass
class StepsInPlan:
    """An observer that passes events on and notes each step's start in its host's plan, so
    the plan reads as the rollout's steps with the commands of each."""

    inner: Observer
    recorders: dict[str, Recorder] = field(default_factory=dict)

    def event(self, ev: Event) -> None:
        recorder = self.recorders.get(ev.host)
        if ev.kind == "start" and recorder is not None:
            recorder.step(ev.step, ev.target)
        self.inner.event(ev)
