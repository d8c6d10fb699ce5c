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
from dataclasses import dataclass
from pathlib import Path

from . import release_shell as rs
from . import shell
from .errors import ConfigError, RemoteError, RolloutError
from .inventory import Host, Pool
from .layout import Layout
from .manifest import Entry, Manifest, parse_checksums
from .remote import Executor

NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def validate_name(name: str) -> str:
    """Release names are letters, digits, '.', '_' and '-', not starting with '.'."""
    if not NAME.fullmatch(name or ""):
        raise ConfigError(f"release name {name!r} is not allowed: use letters, digits, "
                          "'.', '_' and '-', not starting with '.'")
    return name


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


def stored_manifest(ex: Executor, layout: Layout, name: str) -> dict[str, Entry] | None:
    text = ex.run(rs.read_manifest(layout, name), f"read manifest of {name}").stdout
    return parse_stored(text) if text.strip() else None


def upload(ex: Executor, host: Host, pool: Pool, source: Path, manifest: Manifest, name: str,
           base: str | None, force: bool = False) -> Upload:
    """Upload `source` as releases/NAME: staged, delta against `base`, verified, renamed."""
    layout = Layout.of(host, pool)
    started = time.monotonic()
    existing = stored_manifest(ex, layout, name)
    if existing is not None:
        if existing == parse_stored(serialize(manifest)):
            return Upload(name, len(manifest.files), 0, 0, 0, time.monotonic() - started, True)
        if not force:
            raise RolloutError(f"{host.name}: release {name} already exists with different "
                               "content; pick a new name or use --force")
    base_entries = stored_manifest(ex, layout, base) if base and base != name else None
    if base_entries is not None:
        base_entries = without_shared(base_entries, pool.shared)
    try:
        try:
            send, sent = _stage(ex, host, layout, name, source, manifest, base, base_entries)
        except DeltaMismatch:
            # the base release was changed after its upload: send everything instead
            send, sent = _stage(ex, host, layout, name, source, manifest, None, None)
        ex.stream(shell.write_stdin(rs.manifest_path(layout, name)), f"store manifest of {name}",
                  io.BytesIO(serialize(manifest).encode()))
        ex.run(rs.commit_release(layout, name, replace=existing is not None), f"commit {name}")
    except RemoteError as exc:
        ex.run(rs.drop_staging(layout, name), "remove the failed upload", check=False)
        raise RolloutError(f"{host.name}: upload of {name} failed, nothing was installed or "
                           f"activated: {_first_line(exc.result.stderr) or exc}") from None
    files = [e for e in send if e.kind == "f"]
    return Upload(name, len(manifest.files), len(files), len(manifest.files) - len(files), sent,
                  time.monotonic() - started)


class DeltaMismatch(RolloutError):
    """A delta upload did not verify."""


def _stage(ex: Executor, host: Host, layout: Layout, name: str, source: Path,
           manifest: Manifest, base: str | None, base_entries: dict[str, Entry] | None
           ) -> tuple[list[Entry], int]:
    """Fill incoming/NAME.partial (hard links from the base + a tar of the rest), verify it."""
    send, keep = plan_delta(manifest, base_entries)
    ex.run(rs.prepare_staging(layout, name, base if base_entries is not None else None),
           f"stage {name}")
    if base_entries is not None:
        ex.stream(rs.prune_staging(layout, name), "prune the hard-linked copy",
                  io.BytesIO(b"".join(p.encode() + b"\0" for p in keep)))
    sent = _send_tar(ex, layout, name, source, send)
    _verify(ex, host, layout, name, manifest, delta=base_entries is not None)
    return send, sent


CAUSES = ("No space left on device", "Disk quota exceeded", "Read-only file system",
          "Permission denied")


def _first_line(text: str) -> str:
    """The line that says why (a full disk first), else the first line of the error."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for cause in CAUSES for line in lines if cause in line),
                lines[0] if lines else "")


def _send_tar(ex: Executor, layout: Layout, name: str, source: Path, entries: list[Entry]) -> int:
    """Stream a gzip tar of `entries` into the host's tar over one raw SSH channel."""
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
        _, sent = ex.stream(rs.extract(layout, name), f"upload {name}", reader)
    finally:
        reader.close()
        producer.join(timeout=30)
    if failure:
        raise RolloutError(f"packing {source} failed: {failure[0]}")
    return sent


def _owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _verify(ex: Executor, host: Host, layout: Layout, name: str, manifest: Manifest,
            delta: bool = False) -> None:
    out = ex.run(rs.verify(layout, name), f"verify {name}").stdout
    first, _, sums = out.partition("\n")
    counts = tuple(int(x) for x in first.split())
    problems = []
    if counts != manifest.counts():
        problems.append(f"counts (files, symlinks, dirs) {counts} != {manifest.counts()}")
    if parse_checksums(sums) != parse_checksums(manifest.checksum_text()):
        problems.append("checksums differ")
    if problems:
        error = DeltaMismatch if delta else RolloutError
        raise error(f"{host.name}: upload of {name} did not verify: "
                    + "; ".join(problems) + " (not installed)")


# --- activation, history, bad marks ------------------------------------------------------------

def activate(ex: Executor, host: Host, pool: Pool, name: str, command: str) -> str | None:
    """Repoint current.release; record release, previous, time and user. Returns previous."""
    layout = Layout.of(host, pool)
    out = ex.run(rs.activate(layout, name), f"activate {name}").stdout.strip()
    previous = out or None
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    line = "\t".join([stamp, name, previous or "-", operator(), command])
    ex.run(rs.append_history(layout, line), "record activation")
    return previous


def operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


@dataclass(frozen=True)
class Activation:
    time: str
    release: str
    previous: str | None
    user: str
    command: str


def history(ex: Executor, host: Host, pool: Pool) -> list[Activation]:
    text = ex.run(rs.read_history(Layout.of(host, pool)), "read history").stdout
    out = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) >= 5:
            out.append(Activation(parts[0], parts[1], None if parts[2] == "-" else parts[2],
                                  parts[3], parts[4]))
    return out


def previous_of(current: str | None, hist: list[Activation]) -> str | None:
    """The release `current` replaced when it was last activated."""
    return next((a.previous for a in reversed(hist) if a.release == current), None)


def bad_releases(ex: Executor, host: Host, pool: Pool) -> set[str]:
    return set(ex.run(rs.list_bad(Layout.of(host, pool)), "list bad releases").stdout.split())


def mark_bad(ex: Executor, host: Host, pool: Pool, name: str) -> None:
    ex.run(rs.mark_bad(Layout.of(host, pool), name), f"mark {name} bad")


# --- listing and cleanup ---------------------------------------------------------------------

@dataclass(frozen=True)
class ReleaseInfo:
    name: str
    created: float
    size_kib: int


def list_releases(ex: Executor, host: Host, pool: Pool) -> list[ReleaseInfo]:
    out = ex.run(rs.list_releases(Layout.of(host, pool)), "list releases").stdout
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


def remove(ex: Executor, host: Host, pool: Pool, name: str) -> None:
    ex.run(rs.remove_release(Layout.of(host, pool), name), f"remove release {name}")
