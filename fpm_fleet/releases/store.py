"""Releases on a host: verified delta upload, activation, history, bad marks, lock, cleanup."""

from __future__ import annotations

import getpass
import gzip
import io
import os
import re
import socket
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fpm_fleet.core.errors import RemoteError, RolloutError
from fpm_fleet.core.inventory import Host, Pool
from fpm_fleet.core.selection import NAME
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as rs
from fpm_fleet.releases.manifest import Entry, Manifest, parse_checksums, safe_mode
from fpm_fleet.remote import shell
from fpm_fleet.remote.command import Command, action, probe, stdout, together
from fpm_fleet.remote.runner import Runner

# --- stored manifests (TSV: kind, mode, digest, path) -----------------------------------------

def serialize(manifest: Manifest) -> str:
    return "".join(f"{e.kind}\t{e.mode:o}\t{e.digest}\t{e.path}\n"
                   for e in manifest.entries.values())


def parse_stored(text: str) -> dict[str, Entry]:
    out: dict[str, Entry] = {}
    for line in text.splitlines():
        parts = line.split("\t", 3)
        if len(parts) == 4 and parts[0] in ("f", "l", "d"):
            kind, mode, digest, path = parts
            out[path] = Entry(path, kind, int(mode, 8), digest)
    return out


def _same(a: Entry, b: Entry | None) -> bool:
    return b is not None and (a.kind, a.mode, a.digest) == (b.kind, b.mode, b.digest)


def plan_delta(new: Manifest, base: dict[str, Entry] | None) -> tuple[list[Entry], list[str]]:
    """What to send, and what a hard-linked copy of the base release may keep.

    Kept: files and symlinks unchanged (content, mode, target) and directories that were
    directories. Everything else in the copy is pruned (including files the base gained after
    its upload, e.g. from a before_activate hook). Directories are always sent, for their
    modes; files and symlinks only when new or changed.
    """
    if base is None:
        return list(new.entries.values()), []
    keep = sorted(p for p, e in new.entries.items()
                  if (e.kind == "d" and getattr(base.get(p), "kind", "") == "d")
                  or (e.kind != "d" and _same(e, base.get(p))))
    send = [e for e in new.entries.values() if e.kind == "d" or not _same(e, base.get(e.path))]
    return send, keep


def without_shared(entries: dict[str, Entry], shared: tuple[str, ...]) -> dict[str, Entry]:
    """A deployed release holds symlinks into shared/ where its manifest says otherwise:
    those paths are removed from the hard-linked copy and sent again."""
    prefixes = [f"./{item.strip('/')}" for item in shared]
    return {p: e for p, e in entries.items()
            if not any(p == pre or p.startswith(pre + "/") for pre in prefixes)}


@dataclass
class Upload:
    release: str
    files: int
    sent_files: int
    linked_files: int
    bytes_sent: int
    seconds: float
    reused: bool = False
    prepared: bool = False  # reused, and sealed: shared links and hooks were done before


def stored_manifest(layout: Layout, name: str) -> Command[dict[str, Entry] | None]:
    """The manifest stored with release `name` (None: no such release)."""
    return Command(rs.read_manifest(layout, name), f"read manifest of {name}",
                   lambda res: parse_stored(res.stdout) if res.stdout.strip() else None)


def upload(at: HostPool, source: Path, manifest: Manifest, name: str, base: str | None,
           force: bool = False, in_use: frozenset[str] = frozenset()) -> Upload:
    """Upload `source` as releases/NAME: staged, delta against `base`, verified, renamed.

    A release of that name already there is reused only if it still verifies on disk; with
    `force` it is replaced, unless it is in `in_use` (current, or pinned by a replica).
    """
    runner, host, pool, layout = at.runner, at.host, at.pool, at.layout
    started = time.monotonic()
    delta_base = base if base and base != name else None
    # both manifests in one round trip (the base one is not needed when NAME is reused)
    existing, base_entries = runner.ask(together(
        f"read manifests of {name} and {delta_base or '-'}",
        [stored_manifest(layout, name), stored_manifest(layout, delta_base or name)]))
    if delta_base is None:
        base_entries = None
    if existing is not None:
        problem, sealed = _reuse_problem(runner, layout, pool, name, manifest, existing)
        if problem is None:
            return Upload(name, len(manifest.files), 0, 0, 0, time.monotonic() - started,
                          True, sealed)
        _refuse_replacing(host, name, problem, force, in_use)
    if base_entries is not None:
        base_entries = without_shared(base_entries, pool.shared)
    try:
        try:
            send, sent = _stage(runner, host, layout, name, source, manifest, base, base_entries)
        except DeltaMismatch:
            # the base release was changed after its upload: send everything instead
            send, sent = _stage(runner, host, layout, name, source, manifest, None, None)
        # one round trip: the manifest is stored only for a verified upload, and committed
        runner.stream(shell.then(shell.write_stdin(rs.manifest_path(layout, name)),
                                 rs.commit_release(layout, name, replace=existing is not None)),
                      f"store the manifest of {name}, commit {name}",
                      io.BytesIO(serialize(manifest).encode()))
    except RemoteError as exc:
        runner.run(rs.drop_staging(layout, name), "remove the failed upload", check=False)
        raise RolloutError(f"{host.name}: upload of {name} failed, nothing was installed or "
                           f"activated: {_cause_line(exc.result.stderr) or exc}") from None
    files = [e for e in send if e.kind == "f"]
    return Upload(name, len(manifest.files), len(files), len(manifest.files) - len(files), sent,
                  time.monotonic() - started)


def _reuse_problem(runner: Runner, layout: Layout, pool: Pool, name: str, manifest: Manifest,
                   existing: dict[str, Entry]) -> tuple[str | None, bool]:
    """Why the release NAME on the host cannot be reused as is (None: it can), and whether
    it was sealed. A sealed release must still be exactly as sealed; one never prepared
    must match its manifest, shared items aside (they may be links into shared/ by now)."""
    if existing != parse_stored(serialize(manifest)):
        return "with different content", False
    now = runner.ask(probe(rs.verify_release(layout, name), f"verify {name} on disk", stdout))
    sealed = runner.ask(probe(rs.read_sealed(layout, name), f"read the seal of {name}", stdout))
    if sealed:
        changes = tree_changes(sealed, now)
        return (f"but was changed on the host since it was prepared ({changes})"
                if changes else None), True
    problems = differences(without_shared(manifest.entries, pool.shared), now,
                           skip=pool.shared)
    return (f"but was changed on the host ({'; '.join(problems)})" if problems else None), False


def _refuse_replacing(host: Host, name: str, problem: str, force: bool,
                      in_use: frozenset[str]) -> None:
    if not force:
        raise RolloutError(f"{host.name}: release {name} already exists {problem}; pick a new "
                           "name or use --force")
    if name in in_use:
        # replacing it would delete files under a serving replica (or the active release)
        raise RolloutError(f"{host.name}: release {name} exists {problem}, and it is in use "
                           "(current or pinned by a running replica): --force never replaces "
                           "a release in use; deploy under a new name")


class DeltaMismatch(RolloutError):
    """A delta upload did not verify."""


def _stage(runner: Runner, host: Host, layout: Layout, name: str, source: Path,
           manifest: Manifest, base: str | None, base_entries: dict[str, Entry] | None
           ) -> tuple[list[Entry], int]:
    """Fill incoming/NAME.partial (hard links from the base + a tar of the rest), verify it."""
    send, keep = plan_delta(manifest, base_entries)
    # the staging dir is made in the round trip of what comes next, once the leftovers of
    # interrupted uploads are gone: with a base, the prune of its hard-linked copy (which
    # reads the paths to keep); else the tar's extraction
    if base_entries is not None:
        runner.stream(shell.then(_staging(layout, name, base), rs.prune_staging(layout, name)),
                      f"stage {name}: hard links from {base}, pruned",
                      io.BytesIO(b"".join(p.encode() + b"\0" for p in keep)))
        sent = _send_tar(runner, layout, name, source, send)
    else:
        sent = _send_tar(runner, layout, name, source, send,
                         staging=_staging(layout, name, None))
    _verify(runner, host, layout, name, manifest, delta=base_entries is not None)
    return send, sent


def _staging(layout: Layout, name: str, base: str | None) -> str:
    """An empty incoming/ (what interrupted uploads left: only ever run under the lock),
    then the staging dir of NAME, hard-linked from `base` when there is one."""
    return shell.then(rs.clear_incoming(layout), rs.prepare_staging(layout, name, base))


CAUSES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
          "Permission denied")


def _cause_line(text: str) -> str:
    """The line that says why (a full disk first), else the first line of the error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for cause in CAUSES for line in lines if cause in line),
                lines[0] if lines else "")


def _send_tar(runner: Runner, layout: Layout, name: str, source: Path, entries: list[Entry],
              staging: str | None = None) -> int:
    """Stream a gzip tar of `entries` into the host's tar over one raw SSH channel (after
    `staging`, the command that makes the staging dir, when it is not made yet)."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_fd, "wb") as raw, \
                    gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3) as gz, \
                    tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for e in entries:
                    tar.add(source / e.path, arcname=e.path, recursive=False, filter=_owner)
        except BrokenPipeError:
            pass
        except BaseException as exc:  # reported to the main thread below
            failure.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    reader = os.fdopen(read_fd, "rb")
    try:
        extract = rs.extract(layout, name)
        _, sent = runner.stream(shell.then(staging, extract) if staging else extract,
                                f"upload {name}", reader)
    finally:
        reader.close()
        producer.join(timeout=30)
    if failure:
        raise RolloutError(f"packing {source} failed: {failure[0]}")
    return sent


def _owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = safe_mode(info.mode)  # what the manifest recorded, and what verify expects
    return info


def parse_tree(text: str) -> tuple[dict[str, tuple[str, int, str]], dict[str, str]]:
    """list_tree output -> ({./path: (kind, mode, symlink target)}, {./path: sha256})."""
    listing, _, sums = text.partition(f"\n{rs.SUMS}\n")
    if listing.startswith(rs.SUMS + "\n"):
        listing, sums = "", listing[len(rs.SUMS) + 1:]
    entries: dict[str, tuple[str, int, str]] = {}
    for line in listing.splitlines():
        parts = line.split("\t", 3)
        if len(parts) == 4 and parts[1].isdigit():
            entries[parts[3]] = (parts[0], int(parts[1], 8), parts[2])
    return entries, parse_checksums(sums)


def _expected(e: Entry) -> tuple[str, int, str]:
    # a symlink's own mode means nothing on Linux: only its target is compared
    return (e.kind, 0o777 if e.kind == "l" else e.mode, e.digest if e.kind == "l" else "")


def _under(path: str, items: tuple[str, ...]) -> bool:
    return any(path == f"./{i.strip('/')}" or path.startswith(f"./{i.strip('/')}/")
               for i in items)


def differences(expected: dict[str, Entry], text: str, skip: tuple[str, ...] = ()) -> list[str]:
    """How the tree that list_tree printed differs from `expected`: entries missing or extra
    (any kind: FIFO, device, socket), kinds, modes, symlink targets, file contents. Paths at
    or below the `skip` items are not compared."""
    actual, sums = parse_tree(text)
    actual = {p: (k, 0o777 if k == "l" else m, t) for p, (k, m, t) in actual.items()
              if not _under(p, skip)}
    want = {p: _expected(e) for p, e in expected.items()}
    problems = []
    extra, missing = sorted(set(actual) - set(want)), sorted(set(want) - set(actual))
    changed = sorted(p for p in set(want) & set(actual) if want[p] != actual[p])
    content = sorted(p for p, e in expected.items()
                     if e.kind == "f" and p in sums and sums[p] != e.digest)
    for label, paths in (("unexpected", extra), ("missing", missing),
                         ("kind, mode or target differs", changed), ("content differs", content)):
        if paths:
            more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
            problems.append(f"{label}: {', '.join(paths[:5])}{more}")
    return problems


def tree_changes(before: str, after: str) -> str:
    """The paths whose entry or content differs between two list_tree outputs."""
    (entries_a, sums_a), (entries_b, sums_b) = parse_tree(before), parse_tree(after)
    paths = sorted({p for p in entries_a.keys() | entries_b.keys()
                    if entries_a.get(p) != entries_b.get(p)}
                   | {p for p in sums_a.keys() | sums_b.keys() if sums_a.get(p) != sums_b.get(p)})
    more = f" and {len(paths) - 5} more" if len(paths) > 5 else ""
    return ", ".join(paths[:5]) + more


def verify(layout: Layout, name: str, manifest: Manifest) -> Command[list[str]]:
    """How the staged upload differs from its manifest (a dry run assumes: not at all)."""
    return Command(rs.verify(layout, name), f"verify {name}",
                   lambda res: differences(manifest.entries, res.stdout), assume=list)


def _verify(runner: Runner, host: Host, layout: Layout, name: str, manifest: Manifest,
            delta: bool = False) -> None:
    problems = runner.ask(verify(layout, name, manifest))
    if problems:
        error = DeltaMismatch if delta else RolloutError
        raise error(f"{host.name}: upload of {name} did not verify: "
                    + "; ".join(problems) + " (not installed)")


# --- activation, history, bad marks ------------------------------------------------------------

def activate(at: HostPool, name: str, command: str, kind: str = "deploy") -> str | None:
    """Repoint current.release; record release, previous, time, user and kind (deploy,
    rollback, revert). Returns previous."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return at.ask(Command(rs.activate(at.layout, name, stamp, operator(), command, kind),
                          f"activate {name}",
                          lambda res: res.stdout.partition("\n")[0].strip() or None,
                          changes=True))


def operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class Activation:
    time: str
    release: str
    previous: str | None
    user: str
    command: str
    kind: str = "deploy"  # deploy, rollback or revert


STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d([+-]\d{4}|Z)?")
UNESCAPE = re.compile(r"\\(.)")
KINDS = ("deploy", "rollback", "revert")


def unescape_field(value: str) -> str:
    table = {"t": "\t", "n": "\n", "r": "\r"}
    return UNESCAPE.sub(lambda m: table.get(m.group(1), m.group(1)), value)


def _legacy_kind(command: str) -> str:
    """Entries written before the kind field: a revert said so in its command."""
    return "revert" if command.startswith("revert of ") else (
        "rollback" if "rollback" in command.split() else "deploy")


def _entry(line: str) -> Activation | None:
    """One history line, or None when it is not a well-formed entry."""
    parts = line.split("\t")
    if len(parts) not in (5, 6) or not STAMP.fullmatch(parts[0]) or not NAME.fullmatch(parts[1]):
        return None
    if parts[2] != "-" and not NAME.fullmatch(parts[2]):
        return None
    command = unescape_field(parts[4])
    kind = parts[5] if len(parts) == 6 else _legacy_kind(command)
    if kind not in KINDS:
        return None
    return Activation(parts[0], parts[1], None if parts[2] == "-" else parts[2],
                      unescape_field(parts[3]), command, kind)


def parse_history_counted(text: str) -> tuple[list[Activation], int]:
    """The well-formed entries, and how many non-empty lines were not (a line written by
    hand, a truncated write, an unknown kind): skipped, never trusted."""
    out, skipped = [], 0
    for line in text.splitlines():
        entry = _entry(line)
        if entry is not None:
            out.append(entry)
        elif line.strip():
            skipped += 1
    return out, skipped


def parse_history(text: str) -> list[Activation]:
    return parse_history_counted(text)[0]


def history_read(at: HostPool) -> Command[list[Activation]]:
    return Command(rs.read_history(at.layout), "read history",
                   lambda res: parse_history(res.stdout))


def history(at: HostPool) -> list[Activation]:
    return at.ask(history_read(at))


def previous_of(current: str | None, hist: list[Activation]) -> str | None:
    """The release `current` replaced when it was last activated."""
    return next((a.previous for a in reversed(hist) if a.release == current), None)


def bad_read(at: HostPool) -> Command[set[str]]:
    return Command(rs.list_bad(at.layout), "list bad releases",
                   lambda res: set(res.stdout.split()))


def bad_releases(at: HostPool) -> set[str]:
    return at.ask(bad_read(at))


def mark_bad(at: HostPool, name: str) -> None:
    at.ask(action(rs.mark_bad(at.layout, name), f"mark {name} bad"))


# --- listing and cleanup ---------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseInfo:
    name: str
    created: float
    size_kib: int


def releases_read(at: HostPool, sizes: bool = True) -> Command[list[ReleaseInfo]]:
    """The releases on the host (`sizes`: with their size, which reads every file)."""
    return Command(rs.list_releases(at.layout, sizes), "list releases",
                   lambda res: parse_releases(res.stdout))


def list_releases(at: HostPool) -> list[ReleaseInfo]:
    return at.ask(releases_read(at))


def parse_releases(out: str) -> list[ReleaseInfo]:
    """rs.list_releases lines (name, mtime, KiB), oldest first."""
    items = []
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].isdigit():
            items.append(ReleaseInfo(parts[0], float(parts[1]),
                                     int(parts[2]) if parts[2].isdigit() else 0))
    return sorted(items, key=lambda r: (r.created, r.name))


def cleanup_candidates(releases: list[ReleaseInfo], keep: int, protected: set[str]) -> list[str]:
    """The oldest releases beyond `keep`, never one in `protected` (current, previous, pinned)."""
    ordered = sorted(releases, key=lambda r: (r.created, r.name), reverse=True)
    kept = {r.name for r in ordered[:keep]} | protected
    return [r.name for r in reversed(ordered) if r.name not in kept]


def remove(at: HostPool, names: Sequence[str]) -> None:
    """Gone from the host's releases at once; their files are deleted in the background."""
    at.ask(action(rs.remove_releases(at.layout, names), f"remove {', '.join(names)}"))
