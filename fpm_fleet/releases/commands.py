"""Pure builders of the remote commands for releases: upload, verify, activate, history,
cleanup (the lock has its own, in lock.py). Paths come from Layout; every word is quoted
with shell.q.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import PurePosixPath

from fpm_fleet.host.layout import Layout
from fpm_fleet.remote.shell import PathLike, q


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


SUMS = "@@fpm-fleet-sums@@"


def list_tree(path: PathLike) -> str:
    """Every entry under `path` (type, octal mode, symlink target, path; sorted bytewise),
    then a SUMS line, then the sha256 of every file: all a verification compares."""
    return (f"cd -- {q(path)} && find . -mindepth 1 -printf '%y\\t%m\\t%l\\t%p\\n' | "
            f"LC_ALL=C sort && printf '%s\\n' {q(SUMS)} && "
            f"find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum")


def verify(layout: Layout, name: str) -> str:
    """The staged upload, as list_tree prints it."""
    return list_tree(staging(layout, name))


def verify_release(layout: Layout, name: str) -> str:
    """An installed release, as list_tree prints it (a same-name redeploy checks it)."""
    return list_tree(layout.release(name))


def sealed_path(layout: Layout, name: str) -> str:
    return f"{manifest_path(layout, name)}.sealed"


def seal(layout: Layout, name: str) -> str:
    """Record the release as it is once prepared (shared links, hooks done), just before its
    first activation: a later same-name deploy reuses it only if it is still exactly so."""
    sealed = sealed_path(layout, name)
    return (f"{{ {list_tree(layout.release(name))}; }} > {q(sealed + '.tmp')} && "
            f"mv -f -- {q(sealed + '.tmp')} {q(sealed)}")


def origin_path(layout: Layout, name: str) -> str:
    """Where a release made from git records its commit (releases/origin.py)."""
    return f"{manifest_path(layout, name)}.origin"


def read_sealed(layout: Layout, name: str) -> str:
    return f"cat -- {q(sealed_path(layout, name))} 2>/dev/null; true"


def commit_release(layout: Layout, name: str, replace: bool) -> str:
    """Rename the verified staging dir to releases/NAME (rename(2): all or nothing)."""
    final, tmp = q(layout.release(name)), q(staging(layout, name))
    unseal = f"rm -f -- {q(sealed_path(layout, name))}"
    if replace:
        old = q(layout.incoming / f"{name}.replaced")
        return (f"{unseal} && rm -rf -- {old}; if [ -e {final} ]; then mv -T -- {final} {old}; "
                f"fi; mv -T -- {tmp} {final} && rm -rf -- {old}")
    return f"[ ! -e {final} ] && {unseal} && mv -T -- {tmp} {final}"


def _no_symlink_above(base: PurePosixPath, item: str) -> str:
    """A test that no directory between `base` and `item` (exclusive) is a symlink."""
    parts = PurePosixPath(item).parts[:-1]
    tests = [f"[ ! -L {q(base.joinpath(*parts[:i + 1]))} ]" for i in range(len(parts))]
    return " && ".join(tests) or "true"


def link_shared(layout: Layout, name: str, items: tuple[str, ...]) -> str:
    """Replace each shared item in the release by a symlink into shared/ (seeded on first use).

    Root deletes the item's path: refused (exit 4) when a directory above it, in the release
    or in shared/, is a symlink, since the path would then lie outside the pool.
    """
    steps = []
    for item in items:
        rel, shared = q(layout.release(name) / item), q(layout.shared / item)
        guard = (f"{{ {_no_symlink_above(layout.release(name), item)} && "
                 f"{_no_symlink_above(layout.shared, item)}; }} || "
                 f"{{ echo {q(f'shared item {item}: a directory above it is a symlink')} >&2; "
                 f"exit 4; }}")
        steps.append(
            f"{guard}; if [ ! -e {shared} ]; then mkdir -p -- \"$(dirname -- {shared})\" && "
            f"if [ -e {rel} ]; then cp -a -- {rel} {shared}; else mkdir -p -- {shared}; fi "
            f"|| exit 1; fi; mkdir -p -- \"$(dirname -- {rel})\" && rm -rf -- {rel} && "
            f"ln -s -- {shared} {rel} || exit 1")
    return "; ".join(steps) if steps else "true"


OWN_COPY = ('for f; do t=$(mktemp -- "$f.XXXXXX") && cp -p -- "$f" "$t" && mv -f -- "$t" "$f" '
            '|| exit 1; done')


def own_copies(layout: Layout, name: str) -> str:
    """Give the release its own copy of every file that shares an inode (a hard link from
    the previous release), before a before_activate hook may rewrite one in place (`>`,
    file_put_contents): copy, then rename(2) over the link, so the other release keeps its
    inode and every byte of it. Symlinks (shared items) are not followed."""
    return (f"find -P {q(layout.release(name))} -type f -links +1 "
            f"-exec sh -c {q(OWN_COPY)} sh {{}} +")


def in_release(layout: Layout, name: str, command: str) -> str:
    """A hook command (before_activate, after_activate) run by sh inside releases/NAME."""
    return f"cd -- {q(layout.release(name))} && sh -c {q(command)}"


before_activate = in_release


def escape_field(value: str) -> str:
    """One history field on one line and without tabs (a newline in a command line must not
    start a forged entry): backslash, tab, newline and carriage return are escaped."""
    return (value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def _repoint(link: PurePosixPath, target: str) -> str:
    """Point the symlink `link` at `target` (already shell text) atomically: a temporary
    symlink renamed over it (rename(2)), so a reader never finds `link` missing."""
    tmp = q(f"{link}.fpm-fleet-tmp")
    return f"rm -f -- {tmp} && ln -s -- {target} {tmp} && mv -T -f -- {tmp} {q(link)}"


def _keep_previous(layout: Layout, name: str) -> str:
    """Repoint previous.release at the release current.release names now ($prev), so Apache
    can still serve the assets of pages old replicas render. Only a real release name: not
    `-` (none, or unreadable), not a dot name (`..` would leave releases/), not `name`
    itself (re-activating the current release keeps its previous), and present."""
    link = _repoint(layout.previous_release, '"releases/$prev"')
    return (f"case $prev in -|.*|{q(name)}) ;; *) [ ! -d {q(layout.releases)}/\"$prev\" ] || "
            f"{{ {link}; }};; esac")


def activate(layout: Layout, name: str, stamp: str, user: str, command: str,
             kind: str = "deploy") -> str:
    """Point current.release at releases/NAME atomically (temp symlink + rename(2)) and
    record it in the history (time, release, previous, user, command, kind: deploy,
    rollback or revert), in one command.

    Prints the previous target's name first. Whatever can fail (the missing release, writing
    the new history beside the old, previous.release) happens before current.release's
    rename; after it only the history's own rename: never an activation without its record.
    previous.release moves first: at no instant is the outgoing release neither current nor
    previous, so its pages' assets stay reachable throughout the flip.
    """
    cur, hist = q(layout.current_release), q(layout.state / "history")
    new = q(f"{layout.state}/history.new")
    fields = " ".join(q(escape_field(f)) for f in (stamp, name))
    record = " ".join(q(escape_field(f)) for f in (user, command, kind))
    return (f"[ -d {q(layout.release(name))} ] || {{ echo {q(f'release {name} is missing')} "
            f">&2; exit 3; }}; prev=$(basename -- \"$(readlink -- {cur} || true)\"); "
            f"printf '%s\\n' \"$prev\"; case $prev in ''|*[!A-Za-z0-9._-]*) prev=-;; esac; "
            f"{{ cat -- {hist} 2>/dev/null; printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' {fields} "
            f"\"$prev\" {record}; }} > {new} && {_keep_previous(layout, name)} && "
            f"{_repoint(layout.current_release, q(f'releases/{name}'))} && "
            f"mv -f -- {new} {hist}")


def read_history(layout: Layout) -> str:
    return f"cat -- {q(layout.state / 'history')} 2>/dev/null; true"


def mark_bad(layout: Layout, name: str) -> str:
    return f"mkdir -p -- {q(layout.state / 'bad')} && touch -- {q(layout.state / 'bad' / name)}"


def list_bad(layout: Layout) -> str:
    return f"ls -1 -- {q(layout.state / 'bad')} 2>/dev/null; true"


def list_releases(layout: Layout, sizes: bool = True) -> str:
    """name, mtime (epoch), size in KiB ("-" without `sizes`: du reads every file of every
    release, too slow for the cleanup that follows each deploy), one TSV line per release.
    No `exit`: it may share a round trip (`together`)."""
    if not sizes:
        # one stat for them all (this runs in every preflight): a process costs a few ms
        return (f"if cd -- {q(layout.releases)} 2>/dev/null; then (set --; for d in */; do "
                f"[ ! -d \"$d\" ] || set -- \"$@\" \"${{d%/}}\"; done; "
                "[ $# -eq 0 ] || stat --printf '%n\\t%Y\\t-\\n' -- \"$@\"); fi")
    return (f"if cd -- {q(layout.releases)} 2>/dev/null; then for d in */; do "
            f"[ -d \"$d\" ] || continue; d=${{d%/}}; "
            f"printf '%s\\t%s\\t%s\\n' \"$d\" \"$(stat -c %Y -- \"$d\")\" "
            "\"$(du -sk -- \"$d\" | cut -f1)\"; done; fi")


# incoming/ entries a removal's background job deletes: a release name never starts with "."
REMOVED = ".removed-"


def remove_releases(layout: Layout, names: Sequence[str]) -> str:
    """Each release renamed into incoming/ (one rename: it is gone from releases/ at once,
    however many files it holds) with its state files removed; then its files are deleted by
    a job detached from the session, so a deploy does not wait on them. A job cut short (a
    reboot) leaves `.removed-*` in incoming/: the next removal's job deletes those too."""
    gone = [f"{{ [ ! -e {q(layout.release(n))} ] || "
            f"mv -T -- {q(layout.release(n))} {q(layout.incoming / (REMOVED + n))}.$$; }} "
            f"&& rm -f -- {q(manifest_path(layout, n))} {q(sealed_path(layout, n))} "
            f"{q(origin_path(layout, n))} {q(layout.state / 'bad' / n)}" for n in names]
    return " && ".join([*gone, _delete_removed(layout)])


def _delete_removed(layout: Layout) -> str:
    """A job detached from the session that deletes every `.removed-*` in incoming/."""
    return (f"setsid -f rm -rf -- {q(layout.incoming)}/{REMOVED}* "
            ">/dev/null 2>&1 </dev/null")


def clear_incoming(layout: Layout) -> str:
    """Leftovers of interrupted uploads (only ever called while holding the lock). What a
    removal's job deletes (remove_releases) is left to such a job: one is started again
    when some is left, in case the last was cut short (a reboot)."""
    removed = (f"find {q(layout.incoming)} -mindepth 1 -maxdepth 1 -name '{REMOVED}*' "
               "-print -quit")
    return (f"find {q(layout.incoming)} -mindepth 1 -maxdepth 1 ! -name '{REMOVED}*' "
            f"-exec rm -rf -- {{}} + && {{ [ -z \"$({removed})\" ] || "
            f"{_delete_removed(layout)}; }}")
