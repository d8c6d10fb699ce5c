"""Where a release came from: the git commit (and the ref asked for) of a release made by
`fab deploy --ref`, recorded on the host beside the release's manifest
(`state/manifests/<name>.origin`), so `fab releases` and `fab status` show it whichever
machine deployed. A release uploaded from a directory has none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fpm_fleet.host.layout import Layout
from fpm_fleet.releases import commands as rs
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.shell import q

COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1, or a SHA-256 repository's
MARK = "@@fpm-fleet-origin@@"


@dataclass(frozen=True)
class Origin:
    commit: str
    ref: str

    @property
    def short(self) -> str:
        return self.commit[:10]


def record(layout: Layout, name: str, origin: Origin) -> str:
    """Write release `name`'s origin atomically (temp file + rename): `key=value` lines."""
    path = rs.origin_path(layout, name)
    tmp = f"{path}.fpm-fleet-tmp"
    lines = " ".join(q(f"{k}={v}") for k, v in (("commit", origin.commit), ("ref", origin.ref)))
    return (f"mkdir -p -- {q(layout.state / 'manifests')} && printf '%s\\n' {lines} > {q(tmp)} "
            f"&& mv -f -- {q(tmp)} {q(path)}")


def read_all(layout: Layout) -> Command[dict[str, Origin]]:
    """Every recorded origin of the pool, by release name."""
    text = (f"cd -- {q(layout.state / 'manifests')} 2>/dev/null || exit 0; for f in *.origin; "
            f"do [ -f \"$f\" ] || continue; printf '%s %s\\n' {q(MARK)} \"${{f%.origin}}\"; "
            f"cat -- \"$f\"; done")
    return Command(text, "read release origins", lambda res: parse(res.stdout))


def parse(text: str) -> dict[str, Origin]:
    """read_all's answer; a file without a well-formed commit is left out, never guessed."""
    found: dict[str, dict[str, str]] = {}
    name = None
    for line in text.splitlines():
        if line.startswith(MARK + " "):
            name = line[len(MARK) + 1:]
            found[name] = {}
        elif name is not None and "=" in line:
            key, _, value = line.partition("=")
            found[name].setdefault(key, value)
    return {n: Origin(f["commit"], f.get("ref", "")) for n, f in found.items()
            if COMMIT.fullmatch(f.get("commit", ""))}
