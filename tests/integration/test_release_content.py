"""What a release holds on a real host, and what may change it: inherited (hard-linked) files
under before_activate hooks, modes, symlinks and names refused before any host is contacted."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tasks import demo

from .conftest import Sandbox, fab, get

HOOKS = r"""before_activate = ['printf x > ping.php',
  "php -r 'file_put_contents(\"lib/part1.php\", \"<?php echo \\\"hooked\\\\n\\\";\\n\");'",
  "php -r 'file_put_contents(\"release.txt\", \"hooked\\n\");'",
  'exit 7']"""


@pytest.fixture(scope="module")
def box(fleet2: Sandbox) -> Sandbox:
    return fleet2


def with_pool_keys(box: Sandbox, tmp_path: Path, keys: str) -> Path:
    inv = tmp_path / "hosts.toml"
    inv.write_text(box.path.read_text().replace("[pools.www]\n", f"[pools.www]\n{keys}\n"))
    return inv


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry of a release: inode, mode and bytes (a symlink's target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            body = (os.readlink(path).encode() if path.is_symlink() else
                    b"" if path.is_dir() else path.read_bytes())
            out[str(path.relative_to(root))] = (st.st_ino, st.st_mode, body)
    return out


def answers(address: str) -> dict[str, str]:
    ping = get(address, "/ping.php")[1]
    return {"ping": ping.split(" pid=")[0], "static": get(address, "/release.txt")[1],
            "includes": get(address, "/atomic.php?ms=0")[1]}


def test_a_hook_rewriting_inherited_files_in_place_never_changes_the_serving_release(
        box: Sandbox, tmp_path: Path) -> None:
    old = box.pool_dir(0) / "releases" / "v1"
    assert os.readlink(box.pool_dir(0) / "current.release") == "releases/v1"
    before, served = snapshot(old), answers(box.addresses()[0])
    assert served == {"ping": "pong v1", "static": "v1\n", "includes": "part1 v1\npart2 v1\n"}
    # the same bytes as v1 plus one file: every file of v1 is inherited (hard-linked)
    source = demo.build(tmp_path / "app", "v1")
    (source / "added.txt").write_text("new in v2\n")
    inv = with_pool_keys(box, tmp_path, HOOKS)
    proc = fab("deploy", "--release", "v2", "--host", "h1", "--source", str(source), "--plain",
               inventory_path=inv)
    assert proc.returncode != 0 and "before_activate `exit 7` failed" in proc.stderr
    linked = re.search(r"(\d+) linked", proc.stderr)
    assert linked and int(linked.group(1)) >= 3, proc.stderr
    new = box.pool_dir(0) / "releases" / "v2"
    assert (new / "ping.php").read_text() == "x"
    assert (new / "release.txt").read_text() == "hooked\n"
    assert "hooked" in (new / "lib" / "part1.php").read_text()
    assert snapshot(old) == before
    assert os.readlink(box.pool_dir(0) / "current.release") == "releases/v1"
    assert answers(box.addresses()[0]) == served
