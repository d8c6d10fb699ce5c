"""What a release holds on a real host, and what may change it: inherited (hard-linked) files
under before_activate hooks, modes, symlinks and names refused before any host is contacted."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from fpm_fleet.sandbox import demo

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


def unreachable(box: Sandbox, tmp_path: Path, keys: str = "") -> Path:
    """The sandbox inventory with every host moved to an address nobody answers on."""
    inv = with_pool_keys(box, tmp_path, keys)
    inv.write_text(inv.read_text().replace('address = "198.18.0.1', 'address = "198.18.0.20'))
    return inv


def test_escaping_symlinks_and_non_utf8_names_are_refused_before_any_host(
        box: Sandbox, tmp_path: Path) -> None:
    inv = unreachable(box, tmp_path)
    for case in ("absolute", "outside", "non-utf8"):
        source = demo.build(tmp_path / case, "v9")
        if case == "absolute":
            os.symlink("/etc", source / "storage")
        elif case == "outside":
            os.symlink("../../elsewhere", source / "lib" / "up")
        else:
            with open(os.fsencode(source) + b"/caf\xe9.php", "wb") as fh:
                fh.write(b"x")
        proc = fab("deploy", "--release", "v9", "--source", str(source), inventory_path=inv)
        assert proc.returncode == 2, proc.stderr
        assert ("outside the source" in proc.stderr or "absolute target" in proc.stderr
                or "is not valid UTF-8" in proc.stderr), proc.stderr
        assert "unreachable" not in proc.stderr and "198.18.0.20" not in proc.stderr
    source = demo.build(tmp_path / "below", "v9")
    (source / "var").mkdir()
    os.symlink("var", source / "storage")
    inv.write_text(inv.read_text().replace('shared = ["storage"]', 'shared = ["storage/logs"]'))
    proc = fab("deploy", "--release", "v9", "--source", str(source), inventory_path=inv)
    assert proc.returncode == 2 and "lies below the symlink ./storage" in proc.stderr


WRITER = """<?php
header('Content-Type: text/plain');
echo @file_put_contents(__DIR__ . '/open/pwned.php', 'x') === false ? "denied\\n" : "WROTE\\n";
"""


def test_modes_are_normalised_and_the_workers_cannot_write_a_release(
        box: Sandbox, tmp_path: Path) -> None:
    source = demo.build(tmp_path / "app", "v5")
    (source / "tool").write_text("#!/bin/sh\n")
    (source / "tool").chmod(0o6755)
    (source / "release.txt").chmod(0o666)
    (source / "open").mkdir(mode=0o777)
    (source / "open").chmod(0o777)
    (source / "writer.php").write_text(WRITER)
    proc = fab("deploy", "--release", "v5", "--host", "h2", "--source", str(source), "--plain")
    assert proc.returncode == 0, proc.stderr
    rel = box.pool_dir(1) / "releases" / "v5"
    for path in [rel, *rel.rglob("*")]:
        if not path.is_symlink():
            assert path.stat().st_mode & 0o7022 == 0, (path, oct(path.stat().st_mode))
    assert get(box.addresses()[1], "/writer.php")[1] == "denied\n"
    remote = box.remote_pool_dir(1) / "releases" / "v5"
    for target in ("open/pwned.php", "release.txt", "tool"):
        tried = box.run(1, "runuser", "-u", "www-data", "--", "sh", "-c",
                        f"printf x >> {remote / target}")
        assert tried.returncode != 0, target
    assert not (rel / "open" / "pwned.php").exists()


def test_a_same_name_release_edited_on_the_host_is_refused_and_force_spares_it_in_use(
        box: Sandbox, tmp_path: Path) -> None:
    # v5 is current on h2 (previous test); the same source again is reused as is
    source = tmp_path / "app"
    demo.build(source, "v5")
    (source / "writer.php").write_text(WRITER)
    (source / "tool").write_text("#!/bin/sh\n")
    (source / "tool").chmod(0o755)  # what 6755 became on the hosts
    (source / "open").mkdir()
    proc = fab("deploy", "--release", "v5", "--host", "h2", "--source", str(source), "--plain")
    assert proc.returncode == 0 and "already present, identical" in proc.stderr, proc.stderr
    edited = box.pool_dir(1) / "releases" / "v5" / "ping.php"
    edited.write_text("<?php echo 'edited on the host';\n")
    proc = fab("deploy", "--release", "v5", "--host", "h2", "--source", str(source), "--plain")
    assert proc.returncode != 0
    assert "changed on the host since it was prepared (./ping.php)" in proc.stderr
    proc = fab("deploy", "--release", "v5", "--host", "h2", "--source", str(source), "--force",
               "--plain")
    assert proc.returncode != 0 and "never replaces a release in use" in proc.stderr
    assert edited.read_text() == "<?php echo 'edited on the host';\n"
    assert os.readlink(box.pool_dir(1) / "current.release") == "releases/v5"
