"""Pure builders of the remote commands for releases: upload, verify, activate, history,
cleanup (the lock has its own, in lock.py). Paths come from Layout; every word is quoted
with shell.q.
"""

from __future__ import annotations

from .layout import Layout
from .shell import q


def manifest_path(layout: Layout, name: str) -> str:
    return str(layout.state / "manifests" / name)


def read_manifest(layout: Layout, name: str) -> str:
    """The stored manifest of release `name`, only if the release itself exists."""
    return (f"[ -d {q(layout.release(name))} ] && cat -- {q(manifest_path(layout, name))} "
            f"2>/dev/null; true")


def staging(layout: Layout, name: str) -> str:
    return str(layout.incoming / f"{name}.partial")


def prepare_staging(layout: Layout, name: str, base: str | None) -> str:
    """A fresh staging dir; with a base release, hard-link its whole tree first (link-dest)."""
    tmp = q(staging(layout, name))
    cmd = (f"mkdir -p -- {q(layout.state / 'manifests')} && rm -rf -- {tmp} && "
           f"mkdir -m 0755 -- {tmp}")
    if base:
        cmd += f" && cp -al -- {q(str(layout.release(base)) + '/.')} {tmp}/"
    return cmd


def prune_staging(layout: Layout, name: str) -> str:
    """Delete everything in the staging dir except the NUL-separated paths read from stdin."""
    return (f"keep=$(mktemp) && LC_ALL=C sort -z -o \"$keep\" && cd -- {q(staging(layout, name))} "
            f"&& find . -mindepth 1 -print0 | LC_ALL=C sort -z | "
            f"LC_ALL=C comm -z -23 - \"$keep\" | xargs -0 -r rm -rf --; "
            f"rc=$?; rm -f -- \"$keep\"; exit $rc")


def extract(layout: Layout, name: str) -> str:
    """Unpack a gzip tar from stdin into staging.

    Changed files were pruned from the hard-linked copy first, and GNU tar replaces an
    existing file by unlinking it (never writing through a hard link into the base).
    """
    return (f"tar -xzf - -C {q(staging(layout, name))} --no-same-owner "
            f"--delay-directory-restore")


def drop_staging(layout: Layout, name: str) -> str:
    return f"rm -rf -- {q(staging(layout, name))}"


def verify(layout: Layout, name: str) -> str:
    """Counts (files, symlinks, dirs) then the sha256 of every file, sorted bytewise."""
    tmp = q(staging(layout, name))
    return (f"cd -- {tmp} && printf '%s %s %s\\n' \"$(find . -type f | wc -l)\" "
            f"\"$(find . -type l | wc -l)\" \"$(find . -mindepth 1 -type d | wc -l)\" && "
            f"find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum")


def commit_release(layout: Layout, name: str, replace: bool) -> str:
    """Rename the verified staging dir to releases/NAME (rename(2): all or nothing)."""
    final, tmp = q(layout.release(name)), q(staging(layout, name))
    if replace:
        old = q(layout.incoming / f"{name}.replaced")
        return (f"rm -rf -- {old}; if [ -e {final} ]; then mv -T -- {final} {old}; fi; "
                f"mv -T -- {tmp} {final} && rm -rf -- {old}")
    return f"[ ! -e {final} ] && mv -T -- {tmp} {final}"


def link_shared(layout: Layout, name: str, items: tuple[str, ...]) -> str:
    """Replace each shared item in the release by a symlink into shared/ (seeded on first use)."""
    steps = []
    for item in items:
        rel, shared = q(layout.release(name) / item), q(layout.shared / item)
        steps.append(
            f"if [ ! -e {shared} ]; then mkdir -p -- \"$(dirname -- {shared})\"; "
            f"if [ -e {rel} ]; then cp -a -- {rel} {shared}; else mkdir -p -- {shared}; fi; fi; "
            f"mkdir -p -- \"$(dirname -- {rel})\" && rm -rf -- {rel} && ln -s -- {shared} {rel}")
    return "; ".join(steps) if steps else "true"


def before_activate(layout: Layout, name: str, command: str) -> str:
    return f"cd -- {q(layout.release(name))} && sh -c {q(command)}"


def activate(layout: Layout, name: str) -> str:
    """Point current.release at releases/NAME atomically (temp symlink + rename(2)).

    Prints the previous target's name first.
    """
    tmp = q(f"{layout.current_release}.fpm-fleet-tmp")
    return (f"[ -d {q(layout.release(name))} ] || {{ echo {q(f'release {name} is missing')} "
            f">&2; exit 3; }}; basename -- \"$(readlink -- {q(layout.current_release)} || true)\"; "
            f"rm -f -- {tmp} && ln -s -- {q(f'releases/{name}')} {tmp} && "
            f"mv -T -f -- {tmp} {q(layout.current_release)}")


def append_history(layout: Layout, line: str) -> str:
    return f"printf '%s\\n' {q(line)} >> {q(layout.state / 'history')}"


def read_history(layout: Layout) -> str:
    return f"cat -- {q(layout.state / 'history')} 2>/dev/null; true"


def mark_bad(layout: Layout, name: str) -> str:
    return f"mkdir -p -- {q(layout.state / 'bad')} && touch -- {q(layout.state / 'bad' / name)}"


def list_bad(layout: Layout) -> str:
    return f"ls -1 -- {q(layout.state / 'bad')} 2>/dev/null; true"


def list_releases(layout: Layout) -> str:
    """name, mtime (epoch), size in KiB, one TSV line per release."""
    return (f"cd -- {q(layout.releases)} 2>/dev/null || exit 0; for d in */; do "
            f"[ -d \"$d\" ] || continue; d=${{d%/}}; "
            f"printf '%s\\t%s\\t%s\\n' \"$d\" \"$(stat -c %Y -- \"$d\")\" "
            f"\"$(du -sk -- \"$d\" | cut -f1)\"; done")


def remove_release(layout: Layout, name: str) -> str:
    return (f"rm -rf -- {q(layout.release(name))} {q(manifest_path(layout, name))} "
            f"{q(layout.state / 'bad' / name)}")


def clear_incoming(layout: Layout) -> str:
    """Leftovers of interrupted uploads (only ever called while holding the lock)."""
    return f"find {q(layout.incoming)} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} +"
