"""A temporary change to every replica's rendered FPM config (`fab setup` owns these files).

Used to give the plain-reload baseline the `process_control_timeout` it is measured with
(fpm-fleet's own configs set it to the pool's stop_timeout). The files live on the hosts:
they are read and rewritten in place through each host's root filesystem (as the host's
root would, owner and mode kept), the originals kept in memory and written back on every
exit path; `fab setup` then confirms they match.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fpm_fleet.core.inventory import Fleet
from fpm_fleet.host.layout import Layout

from .sandbox import on_host, sandbox_host


def _global_section(lines: list[str]) -> tuple[int, int]:
    """(first line after `[global]`, index of the next section or the end)."""
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "[global]") + 1
    except StopIteration:
        raise ValueError("no [global] section") from None
    end = next((i for i in range(start, len(lines)) if lines[i].lstrip().startswith("[")),
               len(lines))
    return start, end


def with_global(text: str, key: str, value: str) -> str:
    """`text` with `key = value` in its [global] section: the existing setting replaced,
    or, when there is none, a new last line of the section."""
    lines = text.splitlines(keepends=True)
    start, end = _global_section(lines)
    setting = f"{key} = {value}\n"
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*=")
    found = [i for i in range(start, end) if pattern.match(lines[i])]
    if found:
        for i in reversed(found[1:]):
            del lines[i]
        lines[found[0]] = setting
        return "".join(lines)
    while end > start and not lines[end - 1].strip():
        end -= 1
    if end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join([*lines[:end], setting, *lines[end:]])


def replica_configs(fleet: Fleet) -> list[Path]:
    """Every replica's rendered config, seen from here through its host's root filesystem."""
    return [on_host(sandbox_host(h), Layout.of(h, p).fpm_conf(n))
            for h in fleet.hosts for p in fleet.pools for n in p.replica_numbers]


@contextmanager
def global_setting(fleet: Fleet, key: str, value: str) -> Iterator[dict[Path, str]]:
    """`key = value` in [global] of every replica config for the block, then the original
    files back. Yields the originals (path -> text)."""
    originals = {path: path.read_text() for path in replica_configs(fleet)}
    try:
        for path, text in originals.items():
            path.write_text(with_global(text, key, value))
        yield dict(originals)
    finally:
        for path, text in originals.items():
            path.write_text(text)
