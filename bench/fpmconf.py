"""A temporary change to every replica's rendered FPM config (`fab setup` owns these files).

Used to give the plain-reload baseline a `process_control_timeout`. The originals are kept
in memory and written back on every exit path; `fab setup` then confirms they match.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tasks.inventory import Fleet
from tasks.layout import Layout


def with_global(text: str, setting: str) -> str:
    """`text` with `setting` added as the last line of its [global] section."""
    lines = text.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "[global]")
    except StopIteration:
        raise ValueError("no [global] section") from None
    end = next((i for i in range(start + 1, len(lines)) if lines[i].lstrip().startswith("[")),
               len(lines))
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    if lines[end - 1] and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join([*lines[:end], setting + "\n", *lines[end:]])


def replica_configs(fleet: Fleet) -> list[Path]:
    """Every replica's rendered config, as a local path (the sandbox shares the filesystem)."""
    return [Path(str(Layout.of(h, p).fpm_conf(n)))
            for h in fleet.hosts for p in fleet.pools for n in p.replica_numbers]


@contextmanager
def global_setting(fleet: Fleet, setting: str) -> Iterator[list[Path]]:
    """Add `setting` to [global] of every replica config for the block, then restore."""
    originals = {path: path.read_text() for path in replica_configs(fleet)}
    try:
        for path, text in originals.items():
            path.write_text(with_global(text, setting))
        yield list(originals)
    finally:
        for path, text in originals.items():
            path.write_text(text)
