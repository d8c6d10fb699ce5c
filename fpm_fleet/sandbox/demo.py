"""Build releases of the demo application (etc/demo-app) for the sandbox, tests and the demo."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from fpm_fleet.core.resources import DEMO_APP


def asset_path(release: str) -> str:
    """The release's own stylesheet, named by a hash as build tools name assets: no two
    releases share it, so an old page asks for a file only the old release has."""
    return f"assets/app.{hashlib.sha256(release.encode()).hexdigest()[:6]}.css"


def build(dest: Path, release: str, healthy: bool = True, filler_files: int = 0,
          filler_bytes: int = 10_000, asset: bool = False) -> Path:
    """Write the demo app for `release` into dest (replaced if present).

    Every file carries the release name, so an answer tells which release it was read from.
    `filler_files` adds that many vendor-like files, to measure uploads of a larger app;
    `asset` adds the release's hashed stylesheet (asset_path).
    """
    if dest.exists():
        shutil.rmtree(dest)
    for src in sorted(DEMO_APP.rglob("*")):
        target = dest / src.relative_to(DEMO_APP)
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        text = src.read_text().replace("@RELEASE@", release)
        target.write_text(text.replace("@HEALTHY@", "true" if healthy else "false"))
    _filler(dest / "vendor", filler_files, filler_bytes)
    if asset:
        (dest / "assets").mkdir(exist_ok=True)
        (dest / asset_path(release)).write_text(f"/* fpm-fleet demo {release} */\n")
    os.chmod(dest, 0o755)
    return dest


def _filler(root: Path, count: int, size: int) -> None:
    for i in range(count):
        path = root / f"pkg{i // 100:03d}" / f"file{i:05d}.php"
        path.parent.mkdir(parents=True, exist_ok=True)
        blocks = (hashlib.sha256(f"filler {i} {j}".encode()).hexdigest()
                  for j in range(size // 64 + 1))
        body = "".join(blocks)[: max(0, size - 20)]
        path.write_text(f"<?php // {body}\n")
