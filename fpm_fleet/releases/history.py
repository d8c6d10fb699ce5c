"""`fab history`: every activation of a pool on a host (deploy, rollback, automatic revert),
read from the host's own record, `state/history`, which `activate` rewrites in the same
remote command that repoints current.release: the record is right whichever control
machine deployed.

An entry's result is not written with it (the activation comes before the roll): a deploy
or rollback that its host reverted is followed by the revert's own entry, from its release
back to its previous one, and shows as `reverted`; any other shows as `ok`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fpm_fleet.core.redact import redact
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as rs
from fpm_fleet.releases.store import Activation, parse_history_counted
from fpm_fleet.remote.command import Command


@dataclass(frozen=True)
class HistoryRow:
    """One activation as `fab history` shows it."""

    host: str
    pool: str
    time: str
    who: str
    kind: str
    before: str | None
    after: str
    command: str  # as typed, its secrets masked
    result: str  # ok or reverted

    def as_json(self) -> dict[str, Any]:
        return {"host": self.host, "pool": self.pool, "time": self.time, "who": self.who,
                "kind": self.kind, "from": self.before, "to": self.after,
                "command": self.command, "result": self.result}


@dataclass(frozen=True)
class PoolHistory:
    """A pool's history on one host: the newest `limit` entries, newest first, and how
    many lines of the record were not well-formed entries (skipped)."""

    host: str
    pool: str
    rows: tuple[HistoryRow, ...]
    total: int
    skipped: int


def _reverted(entry: Activation, following: Activation | None) -> bool:
    return (following is not None and following.kind == "revert"
            and entry.kind != "revert" and following.release == entry.previous
            and following.previous == entry.release)


def results(entries: list[Activation]) -> list[str]:
    """Per entry, oldest first: `reverted` when the next entry is its host's revert of it."""
    nexts: list[Activation | None] = [*entries[1:], None][:len(entries)]
    return ["reverted" if _reverted(e, n) else "ok" for e, n in zip(entries, nexts, strict=True)]


def pool_history(host: str, pool: str, text: str, limit: int = 0) -> PoolHistory:
    """The history file's text (as rs.read_history prints it) into rows, the newest
    `limit` (0: all) first (pure)."""
    entries, skipped = parse_history_counted(text)
    rows = [HistoryRow(host, pool, e.time, e.user, e.kind, e.previous, e.release,
                       redact(e.command), result)
            for e, result in zip(entries, results(entries), strict=True)]
    newest = rows[::-1][:limit] if limit > 0 else rows[::-1]
    return PoolHistory(host, pool, tuple(newest), len(entries), skipped)


def read(at: HostPool, limit: int = 0) -> PoolHistory:
    return at.ask(Command(rs.read_history(at.layout), "read history",
                          lambda res: pool_history(at.host.name, at.pool.name, res.stdout,
                                                   limit)))
