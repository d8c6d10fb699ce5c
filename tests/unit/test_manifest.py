"""fpm_fleet.releases.manifest: scan a source tree into a manifest the host can reproduce byte for
byte."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from fpm_fleet.core.errors import ConfigError
from fpm_fleet.releases import manifest


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "build"
    files = {"index.php": "<?php echo 'hi';\n", "B.php": "upper\n", "a.php": "a\n",
             "a-b.php": "dash\n", "a/b.php": "slash\n", "a/c/deep.php": "deep\n",
             "\u00e4.php": "umlaut\n", "with space.php": "sp\n", ".htaccess": "Deny\n",
             "tab\there.txt": "tab\n"}
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "bin.sh").write_text("#!/bin/sh\n")
    (root / "bin.sh").chmod(0o755)
    (root / "empty").mkdir()
    os.symlink("index.php", root / "link.php")
    os.symlink("a/c", root / "dirlink")
    return root


def test_scan_records_files_symlinks_and_directories(tree):
    m = manifest.scan(tree)
    kinds = {p: e.kind for p, e in m.entries.items()}
    assert kinds["./index.php"] == "f"
    assert kinds["./a/c/deep.php"] == "f"
    assert kinds["./a"] == kinds["./a/c"] == kinds["./empty"] == "d"
    assert kinds["./link.php"] == kinds["./dirlink"] == "l"
    assert m.counts() == (11, 2, 3)
    assert "./a/c/deep.php" in m.entries  # walked into real dirs
    assert not any(p.startswith("./dirlink/") for p in m.entries)  # not into linked dirs


def test_scan_records_digest_size_and_mode_of_files(tree):
    m = manifest.scan(tree)
    entry = m.entries["./index.php"]
    assert entry.digest == hashlib.sha256(b"<?php echo 'hi';\n").hexdigest()
    assert entry.size == len("<?php echo 'hi';\n")
    assert m.entries["./bin.sh"].mode == 0o755
    assert m.size == sum((tree / e.path).stat().st_size for e in m.files)


def test_scan_records_symlink_targets_as_their_digest(tree):
    m = manifest.scan(tree)
    assert m.entries["./link.php"].digest == "index.php"
    assert m.entries["./dirlink"].digest == "a/c"
    assert m.entries["./link.php"].size == 0


def test_checksum_text_equals_sha256sum_of_find_sorted_bytewise(tree):
    expected = subprocess.run(
        ["sh", "-c", "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum"],
        cwd=tree, capture_output=True, check=True).stdout.decode()
    text = manifest.scan(tree).checksum_text()
    assert text == expected
    paths = [line.split("  ", 1)[1] for line in text.splitlines()]
    assert paths.index("./B.php") < paths.index("./a-b.php") < paths.index("./a.php") \
        < paths.index("./a/b.php")


def test_parse_checksums_maps_paths_to_digests(tree):
    m = manifest.scan(tree)
    sums = manifest.parse_checksums(m.checksum_text())
    assert sums["./with space.php"] == m.entries["./with space.php"].digest
    assert len(sums) == len(m.files)


def test_scan_refuses_an_empty_directory(tmp_path):
    with pytest.raises(ConfigError, match="holds no files"):
        manifest.scan(tmp_path)


def test_scan_refuses_a_tree_of_only_empty_directories(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds no files"):
        manifest.scan(tmp_path)


def test_scan_refuses_a_missing_source(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        manifest.scan(tmp_path / "nope")


@pytest.mark.parametrize("name", ["new\nline.php", "cr\r.php", "back\\slash.php"])
def test_scan_refuses_names_that_break_the_line_protocol(tmp_path, name):
    (tmp_path / "ok.php").write_text("x")
    (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError, match="newline or backslash"):
        manifest.scan(tmp_path)


def test_scan_refuses_a_directory_name_with_a_newline(tmp_path):
    (tmp_path / "ok.php").write_text("x")
    (tmp_path / "bad\ndir").mkdir()
    with pytest.raises(ConfigError, match="newline"):
        manifest.scan(tmp_path)


def test_scan_refuses_special_files(tmp_path):
    (tmp_path / "ok.php").write_text("x")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ConfigError, match="neither a file, a directory nor a symlink"):
        manifest.scan(tmp_path)
