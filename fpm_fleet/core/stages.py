"""Stages: one inventory file per stage (`stages/staging.toml`, `stages/production.toml`),
sharing what they have in common through `extends = "common.toml"`.

A file that extends others is laid over them: tables merge key by key, anything else (a
string, a number, a list such as `hosts` or `shared`) is replaced whole by the extending
file. Relative paths are taken from the directory of the file that writes them (the
`anchor` callback of the inventory rewrites them first), so a shared file works from any
stage's directory.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fpm_fleet.core.errors import ConfigError

STAGES_DIR = "stages"
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# A chain longer than this is a mistake (a stage, a shared file, maybe a site-wide one)
MAX_DEPTH = 8

Anchor = Callable[[dict[str, Any], str], dict[str, Any]]


def stage_name(path: str | Path) -> str:
    """What a run calls its stage: the inventory file's name without `.toml`."""
    return Path(path).stem


def choose(inventory: str, stage: str, default: str) -> str:
    """The inventory file to load: `stages/<stage>.toml` when a stage is named
    (FABRIC_STAGE or `stage:` in fabric.yaml), else the configured inventory. Naming both a
    stage and another inventory file is refused: which one was meant is not clear."""
    if not stage:
        return inventory
    if not STAGE_NAME.fullmatch(stage):
        raise ConfigError(f"stage {stage!r}: a stage name is letters, digits, '.', '_' and '-'")
    if inventory != default:
        raise ConfigError(f"both a stage ({stage}) and an inventory file ({inventory}) are "
                          "chosen: set FABRIC_STAGE or FABRIC_INVENTORY, not both")
    path = Path(STAGES_DIR) / f"{stage}.toml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(STAGES_DIR).glob("*.toml"))
        raise ConfigError(f"stage {stage!r}: {path} not found (stages here: "
                          f"{', '.join(known) or 'none'})")
    return str(path)


def read(path: str, anchor: Anchor) -> dict[str, Any]:
    """The inventory at `path` with every file it extends laid under it."""
    return _read(path, anchor, ())


def _read(path: str, anchor: Anchor, chain: tuple[str, ...]) -> dict[str, Any]:
    real = os.path.realpath(path)
    if real in chain:
        raise ConfigError(f"{path}: extends: a loop ({' -> '.join([*chain, real])})")
    if len(chain) >= MAX_DEPTH:
        raise ConfigError(f"{path}: extends: more than {MAX_DEPTH} files deep")
    data = anchor(_decode(path, chain), path)
    bases = _bases(path, data.pop("extends", []))
    merged: dict[str, Any] = {}
    for base in bases:
        merged = merge(merged, _read(base, anchor, (*chain, real)))
    return merge(merged, data)


def _decode(path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        what = "a file it extends" if chain else "inventory file"
        raise ConfigError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _bases(path: str, value: Any) -> list[str]:
    """`extends` is one path or a list of them, relative to the file that names them."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"{path}: extends: must be a file name or a list of file names")
    here = Path(path).parent
    return [str(Path(n).expanduser() if Path(n).expanduser().is_absolute() else here / n)
            for n in names]


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` laid on `base`: tables merge key by key, every other value replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
