"""The content manifest of a release: what is in it, byte for byte (pure, local side).

The text format is exactly what `sha256sum` prints for `./relative/path`, sorted as
`LC_ALL=C sort`, so the host can compute the same text and the two are compared whole.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError


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


def scan(root: Path) -> Manifest:
    """Walk a source directory. Refuses names that cannot cross a line-based protocol."""
    if not root.is_dir():
        raise ConfigError(f"source {root} is not a directory")
    manifest = Manifest()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = Path(dirpath) / name
            rel = "./" + full.relative_to(root).as_posix()
            if any(c in rel for c in "\n\r\\"):
                raise ConfigError(f"source file name {rel!r} holds a newline or backslash")
            manifest.entries[rel] = _entry(full, rel)
    if not manifest.files:
        raise ConfigError(f"source {root} holds no files")
    return manifest


def _entry(full: Path, rel: str) -> Entry:
    st = full.lstat()
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(full)
        if any(c in target for c in "\t\n\r"):
            raise ConfigError(f"source symlink {rel} points to a name with a tab or newline")
        return Entry(rel, "l", mode, target)
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, "d", mode)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"source {rel} is neither a file, a directory nor a symlink")
    digest = hashlib.sha256()
    with open(full, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return Entry(rel, "f", mode, digest.hexdigest(), st.st_size)
