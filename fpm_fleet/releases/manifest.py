"""The content manifest of a release: what is in it, byte for byte (pure, local side).

The text format is exactly what `sha256sum` prints for `./relative/path`, sorted as
`LC_ALL=C sort`, so the host can compute the same text and the two are compared whole.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass, field
from pathlib import Path

from fpm_fleet.core.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    path: str  # "./a/b.php"
    kind: str  # "f" file, "l" symlink, "d" directory
    mode: int
    digest: str = ""  # sha256 for files, the target for symlinks
    size: int = 0


@dataclass
class Manifest:
    entries: dict[str, Entry] = field(default_factory=dict)

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.kind == "f"]

    @property
    def size(self) -> int:
        return sum(e.size for e in self.files)

    def checksum_text(self) -> str:
        """Same as `find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum`."""
        lines = [f"{e.digest}  {e.path}\n" for e in sorted(self.files, key=_c_sort_key)]
        return "".join(lines)

    def counts(self) -> tuple[int, int, int]:
        kinds = [e.kind for e in self.entries.values()]
        return kinds.count("f"), kinds.count("l"), kinds.count("d")


def _c_sort_key(e: Entry) -> bytes:
    return e.path.encode()


def parse_checksums(text: str) -> dict[str, str]:
    """sha256sum output -> {./path: digest}."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        digest, sep, path = line.partition("  ")
        if sep:
            out[path] = digest
    return out


UNSAFE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH


def safe_mode(mode: int) -> int:
    """The mode a release entry gets on the hosts: no setuid/setgid/sticky bit and no write
    for group or other, so only the release's owner (never the PHP workers) can change it."""
    return stat.S_IMODE(mode) & ~UNSAFE_BITS


def scan(root: Path) -> Manifest:
    """Walk a source directory. Refuses names that cannot cross a line-based protocol or are
    not UTF-8, and symlinks that leave the source."""
    if not root.is_dir():
        raise ConfigError(f"source {root} is not a directory")
    manifest = Manifest()
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            rel = "./" + full.relative_to(root).as_posix()
            _check_name(full, rel)
            manifest.entries[rel] = _entry(full, rel, real_root)
    if not manifest.files:
        raise ConfigError(f"source {root} holds no files")
    return manifest


def _check_name(full: Path, rel: str) -> None:
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        # os.walk hands undecodable bytes over as surrogates: name the file by its bytes
        raise ConfigError(f"source file name {os.fsencode(full)!r} is not valid UTF-8: "
                          "rename it (hosts, manifests and logs speak UTF-8)") from None
    if any(c in rel for c in "\n\r\\"):
        raise ConfigError(f"source file name {rel!r} holds a newline or backslash")


def _check_link(full: Path, rel: str, target: str, real_root: str) -> None:
    """A symlink must stay inside the release: root acts on paths under it on every host
    (shared links replace paths, hooks run there), and the release must not depend on what
    lies beside it. Checked both by its text and by resolving it in the source."""
    try:
        target.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"source symlink {rel} points to a name that is not valid "
                          "UTF-8") from None
    if any(c in target for c in "\t\n\r"):
        raise ConfigError(f"source symlink {rel} points to a name with a tab or newline")
    if posixpath.isabs(target):
        raise ConfigError(f"source symlink {rel} -> {target} has an absolute target: make it "
                          "relative to a path inside the source")
    lexical = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    resolved = os.path.realpath(full)
    if lexical == ".." or lexical.startswith("../") or \
            os.path.commonpath([real_root, resolved]) != real_root:
        raise ConfigError(f"source symlink {rel} -> {target} points outside the source")


def check_shared(manifest: Manifest, shared: tuple[str, ...], pool: str) -> None:
    """Refuse shared items below a symlink of the source: the shared-link step replaces the
    item as root, and through the symlink that path would lie elsewhere."""
    for item in shared:
        parts = [p for p in item.strip("/").split("/") if p]
        for i in range(1, len(parts)):
            parent = "./" + "/".join(parts[:i])
            if getattr(manifest.entries.get(parent), "kind", "") == "l":
                raise ConfigError(f"shared item {item!r} of pool {pool} lies below the symlink "
                                  f"{parent} of the source: make {parent} a directory")


def _entry(full: Path, rel: str, real_root: str) -> Entry:
    st = full.lstat()
    mode = safe_mode(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        _check_link(full, rel, target, real_root)
        return Entry(rel, "l", 0o777, target)
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, "d", mode)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"source {rel} is neither a file, a directory nor a symlink")
    digest = hashlib.sha256()
    with open(full, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return Entry(rel, "f", mode, digest.hexdigest(), st.st_size)
