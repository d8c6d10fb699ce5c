"""fpm_fleet.releases.commands: exact strings for the key builders, and each command run for real
against a pool layout in tmp_path (stage, extract, verify, commit, activate, lock, ...)."""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest

from fpm_fleet.core.errors import ConfigError
from fpm_fleet.core.selection import validate_name
from fpm_fleet.host.layout import Layout
from fpm_fleet.releases import commands as rs
from fpm_fleet.releases import manifest
from fpm_fleet.releases import store as release
from fpm_fleet.remote import shell

SRV = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")


def make_release(layout: Layout, name: str, files: dict[str, str] | None = None) -> Path:
    path = Path(layout.release(name))
    path.mkdir(parents=True)
    for rel, text in (files or {"index.php": f"<?php echo '{name}';\n"}).items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def tar_gz(source: Path, paths: list[str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in paths:
            tar.add(source / p, arcname=p, recursive=False)
    return buf.getvalue()


# --- exact strings -----------------------------------------------------------------------------

def act(layout: Layout, name: str, command: str = "fab deploy") -> str:
    return rs.activate(layout, name, "2026-01-01T00:00:00+0000", "alice@box", command)


def test_activate_command_writes_history_beside_then_renames_symlink_and_history():
    assert act(SRV, "v2", "fab deploy --release v2") == (
        "[ -d /srv/fpm-fleet/www/releases/v2 ] || { echo 'release v2 is missing' >&2; "
        "exit 3; }; prev=$(basename -- \"$(readlink -- /srv/fpm-fleet/www/current.release || "
        "true)\"); printf '%s\\n' \"$prev\"; case $prev in ''|*[!A-Za-z0-9._-]*) prev=-;; esac; "
        "{ cat -- /srv/fpm-fleet/www/state/history 2>/dev/null; "
        "printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' 2026-01-01T00:00:00+0000 v2 \"$prev\" "
        "alice@box 'fab deploy --release v2' deploy; } > /srv/fpm-fleet/www/state/history.new && "
        "case $prev in -|.*|v2) ;; *) [ ! -d /srv/fpm-fleet/www/releases/\"$prev\" ] || "
        "{ rm -f -- /srv/fpm-fleet/www/previous.release.fpm-fleet-tmp && "
        "ln -s -- \"releases/$prev\" /srv/fpm-fleet/www/previous.release.fpm-fleet-tmp && "
        "mv -T -f -- /srv/fpm-fleet/www/previous.release.fpm-fleet-tmp "
        "/srv/fpm-fleet/www/previous.release; };; esac && "
        "rm -f -- /srv/fpm-fleet/www/current.release.fpm-fleet-tmp && "
        "ln -s -- releases/v2 /srv/fpm-fleet/www/current.release.fpm-fleet-tmp && "
        "mv -T -f -- /srv/fpm-fleet/www/current.release.fpm-fleet-tmp "
        "/srv/fpm-fleet/www/current.release && "
        "mv -f -- /srv/fpm-fleet/www/state/history.new /srv/fpm-fleet/www/state/history")


def test_commit_release_without_replace_refuses_an_existing_release():
    assert rs.commit_release(SRV, "v2", replace=False) == (
        "[ ! -e /srv/fpm-fleet/www/releases/v2 ] && "
        "rm -f -- /srv/fpm-fleet/www/state/manifests/v2.sealed && "
        "mv -T -- /srv/fpm-fleet/www/incoming/v2.partial /srv/fpm-fleet/www/releases/v2")


def test_link_shared_without_items_is_a_no_op():
    assert rs.link_shared(SRV, "v1", ()) == "true"


def test_paths_of_manifests_and_staging_live_under_state_and_incoming():
    assert rs.manifest_path(SRV, "v1") == "/srv/fpm-fleet/www/state/manifests/v1"
    assert rs.staging(SRV, "v1") == "/srv/fpm-fleet/www/incoming/v1.partial"


# --- activation --------------------------------------------------------------------------------

def test_activate_repoints_current_release_and_prints_the_previous_name(sh, layout):
    make_release(layout, "v1")
    make_release(layout, "v2")
    first = sh(act(layout, "v1"))
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == ""  # nothing was active before
    assert os.readlink(layout.current_release) == "releases/v1"
    second = sh(act(layout, "v2"))
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "v1"
    assert os.readlink(layout.current_release) == "releases/v2"
    assert Path(layout.current_release, "index.php").read_text() == "<?php echo 'v2';\n"
    assert sorted(p.name for p in Path(layout.dir).iterdir() if "current" in p.name) == [
        "current", "current.release"]


def previous(layout: Layout) -> str | None:
    try:
        return os.readlink(layout.previous_release)
    except FileNotFoundError:
        return None


def test_previous_release_follows_each_activation_revert_and_rollback_included(sh, layout):
    for name in ("v1", "v2", "v3"):
        make_release(layout, name, {"public/app.css": name})
    steps = [("v1", None), ("v2", "releases/v1"), ("v3", "releases/v2"),
             ("v2", "releases/v3"),  # a revert v3 -> v2: the failed v3's assets stay served
             ("v1", "releases/v2")]  # a rollback
    for name, expected in steps:
        result = sh(act(layout, name))
        assert result.returncode == 0, result.stderr
        assert os.readlink(layout.current_release) == f"releases/{name}"
        assert previous(layout) == expected, f"after activating {name}"
    lay = replace(layout, document_root="public")
    assert Path(lay.fallback_web_root, "app.css").read_text() == "v2"
    # the history record is as before: the previous field, one entry per activation
    lines = Path(layout.state, "history").read_text().splitlines()
    assert [line.split("\t")[1:3] for line in lines] == [
        ["v1", "-"], ["v2", "v1"], ["v3", "v2"], ["v2", "v3"], ["v1", "v2"]]
    assert not list(Path(layout.dir).glob("*.fpm-fleet-tmp"))


def test_previous_release_moves_only_to_a_real_other_release(sh, layout):
    make_release(layout, "v1")
    make_release(layout, "v2")
    sh(act(layout, "v1"))
    sh(act(layout, "v2"))
    assert previous(layout) == "releases/v1"
    # re-activating the current release: previous.release must not name it
    assert sh(act(layout, "v2")).returncode == 0
    assert previous(layout) == "releases/v1"
    # current.release naming no release (removed, a dot name leaving releases/, forged)
    for target in ("releases/gone", "releases/..", "releases/.", "releases/x y"):
        os.remove(layout.current_release)
        os.symlink(target, layout.current_release)
        assert sh(act(layout, "v2")).returncode == 0, target
        assert previous(layout) == "releases/v1", target


def test_activate_never_lets_a_reader_see_previous_release_missing(sh, layout):
    for name in ("v1", "v2", "v3"):
        make_release(layout, name)
    sh(act(layout, "v1"))
    sh(act(layout, "v2"))
    done = threading.Event()
    seen: set[str | None] = set()

    def reader() -> None:
        while not done.is_set():
            seen.add(previous(layout))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(30):
            assert sh(act(layout, ("v3", "v2")[i % 2])).returncode == 0
    finally:
        done.set()
        t.join()
    assert None not in seen
    assert seen <= {"releases/v1", "releases/v2", "releases/v3"}


def test_activate_of_a_missing_release_fails_with_3_and_changes_nothing(sh, layout):
    make_release(layout, "v1")
    sh(act(layout, "v1"))
    result = sh(act(layout, "v9"))
    assert result.returncode == 3
    assert "release v9 is missing" in result.stderr
    assert os.readlink(layout.current_release) == "releases/v1"


def test_activate_never_lets_a_reader_see_current_release_missing(sh, layout):
    make_release(layout, "v1")
    make_release(layout, "v2")
    sh(act(layout, "v1"))
    commands = [act(layout, "v2"), act(layout, "v1")]
    done = threading.Event()
    misses: list[str] = []
    seen: set[str] = set()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.add(os.readlink(layout.current_release))
            except FileNotFoundError:
                misses.append("missing")

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(40):
            assert sh(commands[i % 2]).returncode == 0
    finally:
        done.set()
        t.join()
    assert misses == []
    assert seen == {"releases/v1", "releases/v2"}


def test_activate_does_not_execute_a_quote_breaking_release_name(sh, layout, pwned):
    sh(act(layout, "x'; touch pwned; '"))
    assert pwned() == []


# --- staging, upload, verify, commit -----------------------------------------------------------

def test_prepare_staging_without_base_makes_an_empty_dir_replacing_leftovers(sh, layout):
    stage = Path(rs.staging(layout, "v2"))
    stage.mkdir()
    (stage / "leftover").write_text("x")
    assert sh(rs.prepare_staging(layout, "v2", None)).returncode == 0
    assert stage.is_dir() and list(stage.iterdir()) == []
    assert Path(layout.state, "manifests").is_dir()


def test_prepare_staging_with_base_hard_links_the_whole_tree(sh, layout):
    base = make_release(layout, "v1", {"index.php": "a", "lib/x.php": "b"})
    (base / "empty").mkdir()
    os.symlink("lib/x.php", base / "link.php")
    assert sh(rs.prepare_staging(layout, "v2", "v1")).returncode == 0
    stage = Path(rs.staging(layout, "v2"))
    for rel in ("index.php", "lib/x.php"):
        assert (stage / rel).stat().st_ino == (base / rel).stat().st_ino
    assert (stage / "empty").is_dir()
    assert os.readlink(stage / "link.php") == "lib/x.php"


def test_prune_staging_keeps_only_the_listed_paths_inside_staging(sh, layout, tmp_path):
    stage = Path(rs.staging(layout, "v2"))
    (stage / "dir" / "sub").mkdir(parents=True)
    (stage / "a b.php").write_text("x")
    (stage / "keep.php").write_text("x")
    (stage / "dir" / "f").write_text("x")
    (stage / "dir" / "sub" / "g").write_text("x")
    (stage / "extra-from-a-hook").write_text("x")
    outside = tmp_path / "outside.php"
    outside.write_text("x")
    kept = b"./keep.php\0./dir\0./dir/f\0./missing\0"
    result = sh(rs.prune_staging(layout, "v2"), stdin=kept)
    assert result.returncode == 0, result.stderr
    assert sorted(str(p.relative_to(stage)) for p in stage.rglob("*")) == \
        ["dir", "dir/f", "keep.php"]
    assert outside.exists()


def test_extract_never_writes_through_a_hard_link_into_the_base_release(sh, layout, tmp_path):
    base = make_release(layout, "v1", {"index.php": "old\n"})
    sh(rs.prepare_staging(layout, "v2", "v1"))
    src = tmp_path / "build"
    src.mkdir()
    (src / "index.php").write_text("new\n")
    result = sh(rs.extract(layout, "v2"), stdin=tar_gz(src, ["index.php"]))
    assert result.returncode == 0, result.stderr
    assert Path(rs.staging(layout, "v2"), "index.php").read_text() == "new\n"
    assert (base / "index.php").read_text() == "old\n"


def test_verify_output_matches_the_local_manifest_of_the_same_tree(sh, layout, tmp_path):
    src = tmp_path / "build"
    for rel in ("index.php", "B.php", "a-b.php", "a/b.php", "a/c/d.php", "\u00e4.php",
                "sp ace.php", ".hidden"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(f"content of {rel}\n")
    (src / "empty").mkdir()
    os.symlink("index.php", src / "link.php")
    local = manifest.scan(src)
    paths = [e.path for e in local.entries.values()]
    sh(rs.prepare_staging(layout, "v1", None))
    assert sh(rs.extract(layout, "v1"), stdin=tar_gz(src, paths)).returncode == 0
    result = sh(rs.verify(layout, "v1"))
    assert result.returncode == 0, result.stderr
    entries, sums = release.parse_tree(result.stdout)
    assert sorted(entries) == sorted(local.entries)
    assert entries["./link.php"] == ("l", 0o777, "index.php")
    assert entries["./empty"][0] == "d" and entries["./index.php"][0] == "f"
    assert sums == manifest.parse_checksums(local.checksum_text())
    assert release.differences(local.entries, result.stdout) == []


def test_verify_notices_a_changed_file(sh, layout, tmp_path):
    src = tmp_path / "build"
    src.mkdir()
    (src / "index.php").write_text("v1\n")
    local = manifest.scan(src)
    stage = Path(rs.staging(layout, "v1"))
    stage.mkdir()
    (stage / "index.php").write_text("tampered\n")
    problems = release.differences(local.entries, sh(rs.verify(layout, "v1")).stdout)
    assert problems == ["content differs: ./index.php"]


def test_commit_release_renames_staging_into_releases(sh, layout):
    stage = Path(rs.staging(layout, "v1"))
    stage.mkdir()
    (stage / "index.php").write_text("v1")
    assert sh(rs.commit_release(layout, "v1", replace=False)).returncode == 0
    assert Path(layout.release("v1"), "index.php").read_text() == "v1"
    assert not stage.exists()


def test_commit_release_without_replace_fails_if_the_release_exists(sh, layout):
    make_release(layout, "v1", {"index.php": "old"})
    Path(rs.staging(layout, "v1")).mkdir()
    assert sh(rs.commit_release(layout, "v1", replace=False)).returncode != 0
    assert Path(layout.release("v1"), "index.php").read_text() == "old"


def test_commit_release_with_replace_swaps_in_the_new_tree(sh, layout):
    make_release(layout, "v1", {"index.php": "old"})
    stage = Path(rs.staging(layout, "v1"))
    stage.mkdir()
    (stage / "index.php").write_text("new")
    assert sh(rs.commit_release(layout, "v1", replace=True)).returncode == 0
    assert Path(layout.release("v1"), "index.php").read_text() == "new"
    assert sorted(p.name for p in Path(layout.incoming).iterdir()) == []


def test_manifest_is_written_from_stdin_and_read_only_while_the_release_exists(sh, layout):
    assert sh(rs.prepare_staging(layout, "v1", None)).returncode == 0
    write = shell.write_stdin(rs.manifest_path(layout, "v1"))
    assert sh(write, stdin=b"f\t644\tabc\t./a\n").returncode == 0
    assert Path(rs.manifest_path(layout, "v1")).read_text() == "f\t644\tabc\t./a\n"
    assert sh(rs.read_manifest(layout, "v1")).stdout == ""  # release not committed yet
    make_release(layout, "v1")
    assert sh(rs.read_manifest(layout, "v1")).stdout == "f\t644\tabc\t./a\n"


def test_clear_incoming_empties_incoming_but_keeps_it(sh, layout):
    inc = Path(layout.incoming)
    (inc / "v1.partial" / "sub").mkdir(parents=True)
    (inc / "v2.replaced").write_text("x")
    assert sh(rs.clear_incoming(layout)).returncode == 0
    assert inc.is_dir() and list(inc.iterdir()) == []


# --- shared links, history, bad marks, listing, removal -------------------------------------

def test_link_shared_seeds_shared_from_the_first_release_then_links_every_release(sh, layout):
    v1 = make_release(layout, "v1", {"storage/log.txt": "kept\n", "index.php": "1"})
    assert sh(rs.link_shared(layout, "v1", ("storage", "var/cache"))).returncode == 0
    shared = Path(layout.shared)
    assert (shared / "storage" / "log.txt").read_text() == "kept\n"
    assert (shared / "var" / "cache").is_dir()
    assert os.readlink(v1 / "storage") == str(shared / "storage")
    assert os.readlink(v1 / "var" / "cache") == str(shared / "var" / "cache")

    v2 = make_release(layout, "v2", {"storage/log.txt": "fresh from build\n"})
    assert sh(rs.link_shared(layout, "v2", ("storage",))).returncode == 0
    assert (v2 / "storage").is_symlink()
    assert (v2 / "storage" / "log.txt").read_text() == "kept\n"


def test_activation_records_history_fields_with_tabs_quotes_and_newlines_escaped(sh, layout):
    make_release(layout, "v1")
    make_release(layout, "v2")
    commands = ["fab deploy --release 'v1'\tx", "fab rollback \"$(x)\"\n2026-01-01T00:00:00\tv9"]
    assert sh(act(layout, "v1", commands[0])).returncode == 0
    assert sh(act(layout, "v2", commands[1])).returncode == 0
    lines = Path(layout.state, "history").read_text().splitlines()
    assert lines == [
        "2026-01-01T00:00:00+0000\tv1\t-\talice@box\tfab deploy --release 'v1'\\tx\tdeploy",
        "2026-01-01T00:00:00+0000\tv2\tv1\talice@box\t"
        "fab rollback \"$(x)\"\\n2026-01-01T00:00:00\\tv9\tdeploy"]
    assert [a.command for a in release.parse_history(sh(rs.read_history(layout)).stdout)] == \
        commands


def test_activation_that_fails_leaves_history_and_current_release_unchanged(sh, layout):
    make_release(layout, "v1")
    sh(act(layout, "v1"))
    before = Path(layout.state, "history").read_text()
    assert sh(act(layout, "v9")).returncode == 3
    assert Path(layout.state, "history").read_text() == before
    assert os.readlink(layout.current_release) == "releases/v1"


def test_read_history_of_a_fresh_pool_is_empty_and_succeeds(sh, layout):
    result = sh(rs.read_history(layout))
    assert (result.returncode, result.stdout) == (0, "")


def test_mark_bad_and_list_bad(sh, layout):
    assert sh(rs.list_bad(layout)).stdout == ""
    sh(rs.mark_bad(layout, "v2"))
    sh(rs.mark_bad(layout, "v3"))
    assert sh(rs.list_bad(layout)).stdout.split() == ["v2", "v3"]


def test_list_releases_prints_name_mtime_and_size_per_release(sh, layout):
    make_release(layout, "v1", {"big.bin": "x" * 10000})
    make_release(layout, "v2")
    Path(layout.releases, "stray-file").write_text("not a release")
    rows = [line.split("\t") for line in sh(rs.list_releases(layout)).stdout.splitlines()]
    assert [r[0] for r in rows] == ["v1", "v2"]
    for name, mtime, size in rows:
        assert int(mtime) == int(Path(layout.release(name)).stat().st_mtime)
        assert int(size) >= 1
    assert int(rows[0][2]) > int(rows[1][2])


def test_list_releases_without_sizes_lists_the_same_releases_with_one_stat(sh, layout):
    make_release(layout, "v1")
    make_release(layout, "v2 b")
    Path(layout.releases, "stray-file").write_text("not a release")
    rows = [line.split("\t") for line in sh(rs.list_releases(layout, sizes=False))
            .stdout.splitlines()]
    assert rows == [[n, str(int(Path(layout.release(n)).stat().st_mtime)), "-"]
                    for n in ("v1", "v2 b")]
    for r in ("v1", "v2 b"):
        shutil.rmtree(layout.release(r))
    assert sh(rs.list_releases(layout, sizes=False)).stdout == ""  # no `*/` match: nothing


def test_list_releases_shows_every_name_validate_name_accepts(sh, layout):
    with pytest.raises(ConfigError):
        validate_name(".v1")  # hidden from the `*/` glob, so refused up front
    make_release(layout, validate_name("v1.0"))
    make_release(layout, validate_name("v2"))
    names = [line.split("\t")[0] for line in sh(rs.list_releases(layout)).stdout.splitlines()]
    assert names == ["v1.0", "v2"]


def test_list_releases_without_releases_dir_prints_nothing(sh, tmp_path):
    lay = Layout(dir=PurePosixPath(tmp_path / "nowhere"), pool="www")
    for sizes in (True, False):
        result = sh(rs.list_releases(lay, sizes))
        assert (result.returncode, result.stdout) == (0, "")


def test_remove_release_removes_tree_manifest_and_bad_mark_only(sh, layout):
    make_release(layout, "v1")
    make_release(layout, "v2")
    Path(layout.state, "manifests").mkdir()
    Path(rs.manifest_path(layout, "v1")).write_text("m")
    Path(rs.manifest_path(layout, "v2")).write_text("m")
    sh(rs.mark_bad(layout, "v1"))
    assert sh(rs.remove_releases(layout, ["v1"])).returncode == 0
    assert not Path(layout.release("v1")).exists()
    assert not Path(rs.manifest_path(layout, "v1")).exists()
    assert not Path(layout.state, "bad", "v1").exists()
    assert Path(layout.release("v2")).is_dir()
    assert Path(rs.manifest_path(layout, "v2")).exists()
    # the files themselves go in the background, and a leftover of an earlier cut-short
    # job goes with them; an upload in progress stays
    assert _gone_soon(lambda: os.listdir(layout.incoming) == [])


def test_removal_takes_leftovers_of_a_cut_short_job_and_spares_uploads(sh, layout):
    make_release(layout, "v1")
    leftover = Path(layout.incoming, rs.REMOVED + "v0.123")
    (leftover / "deep").mkdir(parents=True)
    partial = Path(rs.staging(layout, "v2"))
    partial.mkdir()
    assert sh(rs.remove_releases(layout, ["v1", "gone-already"])).returncode == 0
    assert _gone_soon(lambda: os.listdir(layout.incoming) == [partial.name])


def test_clearing_incoming_removes_uploads_and_restarts_the_deletion_of_removed_releases(
        sh, layout):
    leftover = Path(layout.incoming, rs.REMOVED + "v0.123")  # a job cut short left it
    (leftover / "deep").mkdir(parents=True)
    partial = Path(rs.staging(layout, "v2"))
    partial.mkdir()
    assert sh(rs.clear_incoming(layout)).returncode == 0
    assert not partial.exists()
    assert _gone_soon(lambda: os.listdir(layout.incoming) == [])
    assert sh(rs.clear_incoming(layout)).returncode == 0  # nothing left: nothing to start


def _gone_soon(done: Callable[[], bool]) -> bool:
    for _ in range(50):
        if done():
            return True
        time.sleep(0.05)
    return False


def test_before_activate_runs_the_command_inside_the_release(sh, layout):
    make_release(layout, "v1")
    assert sh(rs.before_activate(layout, "v1", "pwd > ran-here")).returncode == 0
    assert Path(layout.release("v1"), "ran-here").read_text().strip() == str(
        layout.release("v1"))


# --- quoting -----------------------------------------------------------------------------------

def test_release_builders_never_execute_metacharacters_in_paths_names_or_notes(
        sh, evil_layout, pwned):
    lay = evil_layout
    name = "v1;$(touch pwned)`touch pwned`'\""
    no_quote = "v1;$(touch pwned)`touch pwned`"
    make_release(lay, name)
    commands = [
        rs.read_manifest(lay, name),
        rs.prepare_staging(lay, name, name),
        rs.verify(lay, name),
        rs.link_shared(lay, name, ("storage;$(touch pwned)",)),
        act(lay, no_quote),
        act(lay, name.replace("'", "")),
        rs.activate(lay, name, "$(touch pwned)", "`touch pwned`", "line $(touch pwned) ' \""),
        rs.verify_release(lay, name),
        rs.seal(lay, name),
        rs.read_sealed(lay, name),
        rs.own_copies(lay, name),
        rs.read_history(lay),
        rs.mark_bad(lay, name),
        rs.list_bad(lay),
        rs.list_releases(lay),
        rs.commit_release(lay, name, replace=True),
        rs.remove_releases(lay, [name]),
        rs.clear_incoming(lay),
    ]
    for cmd in commands:
        sh(cmd)
        assert pwned() == [], cmd
    for cmd in (rs.prune_staging(lay, name), shell.write_stdin(rs.manifest_path(lay, name)),
                rs.extract(lay, name)):
        sh(cmd, stdin=b"")
        assert pwned() == [], cmd
    assert Path(lay.shared, "storage;$(touch pwned)").is_dir()
    assert "line $(touch pwned)" in Path(lay.state, "history").read_text()
