"""after_activate: the pool's commands run on a host once all its replicas serve a release
(after a deploy, a rollback, or an automatic revert, for the release then serving), inside
that release's directory, as the deploy user.

The release already serves when they run, so a failure never undoes it: it is returned,
shown per host and in the recap, and makes the run exit non-zero; the commands after the
failing one are not run. Deploying the same release again runs them again.
"""

from __future__ import annotations

from dataclasses import dataclass

from fpm_fleet.core.errors import RemoteError, RemoteResult
from fpm_fleet.core.events import Observer, step
from fpm_fleet.core.redact import redact
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as rs
from fpm_fleet.remote.command import Command, action


@dataclass(frozen=True)
class HookOutcome:
    """What after_activate did on one pool of one host, for `release`."""

    release: str
    ran: int  # commands that succeeded
    failed: str | None = None  # the failing command (masked) and why

    @property
    def ok(self) -> bool:
        return self.failed is None

    @property
    def text(self) -> str:
        return f"ok ({self.ran})" if self.ok else f"FAILED: {self.failed}"


def command(at: HostPool, release: str, hook: str) -> Command[RemoteResult]:
    """One after_activate command in releases/RELEASE; shown (progress, dry run, errors)
    with its secrets masked, while the run log keeps it exact."""
    shown = redact(hook)
    return action(rs.in_release(at.layout, release, hook), f"after_activate {shown}",
                  shown=rs.in_release(at.layout, release, shown))


def after_activate(at: HostPool, release: str, obs: Observer) -> HookOutcome | None:
    """Run the pool's after_activate commands for `release`, in order, until one fails
    (None: the pool has none). A command that fails or times out on the host is the
    outcome's failure, never an exception: the release serves whatever it says."""
    ran = 0
    for hook in at.pool.after_activate:
        try:
            with step(obs, at.host.name, "after_activate", at.pool.name) as s:
                s.detail = redact(hook)
                at.ask(command(at, release, hook))
        except RemoteError as exc:
            return HookOutcome(release, ran, f"`{redact(hook)}` {_why(exc)}; {release} "
                                             "still serves")
        ran += 1
    return HookOutcome(release, ran) if at.pool.after_activate else None


def _why(exc: RemoteError) -> str:
    """The exit status and the last line it printed, masked too (a shell's error may
    quote the command)."""
    lines = (exc.result.stderr.strip() or exc.result.stdout.strip()).splitlines()
    return f"failed (exit {exc.result.exited}): {redact(lines[-1]) if lines else 'no output'}"
