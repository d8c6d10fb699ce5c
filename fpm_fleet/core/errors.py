"""The small error hierarchy: raised by the core, turned into messages at the task boundary."""

from __future__ import annotations

from dataclasses import dataclass


class FleetError(Exception):
    """Base of every error fpm-fleet reports to the operator."""

    exit_code = 1


class ConfigError(FleetError):
    """The inventory (or a command-line option) is wrong; no host was touched."""

    exit_code = 2


class UsageError(FleetError):
    """A selector or option names something that does not exist."""

    exit_code = 2


class ConnectError(FleetError):
    """A host could not be reached or refused our credentials / host key."""

    exit_code = 3


@dataclass
class RemoteResult:
    """What one remote command returned."""

    command: str
    exited: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exited == 0


class RemoteError(FleetError):
    """A remote command failed; carries the host and the result."""

    exit_code = 4

    def __init__(self, host: str, what: str, result: RemoteResult) -> None:
        self.host = host
        self.what = what
        self.result = result
        detail = (result.stderr.strip() or result.stdout.strip()).splitlines()
        tail = detail[-1] if detail else "no output"
        super().__init__(f"{host}: {what} failed (exit {result.exited}): {tail}")


class AfterActivateError(FleetError):
    """A pool's after_activate commands failed once its release served (never undone)."""

    exit_code = 4


class RolloutError(FleetError):
    """A rollout step failed: the affected replica is out of rotation, the rest serve."""

    exit_code = 5


class AnswerError(RolloutError):
    """A host answered something fpm-fleet cannot read (balancer-manager, FPM status): the
    step could not finish, so the replica in hand is put back if it is healthy."""


class LockError(FleetError):
    """Another deploy holds the host's lock."""

    exit_code = 6


class SourceError(FleetError):
    """The release could not be made on the control machine (a ref that does not exist, a
    repository out of reach, a failing build step); no host was touched."""

    exit_code = 7
