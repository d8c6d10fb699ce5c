"""fpm_fleet.releases.store: names, stored manifests, the delta plan, cleanup choice; and the
upload,
lock and activation run against a local pool directory through a local runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fpm_fleet.core.errors import ConfigError, RolloutError
from fpm_fleet.core.selection import validate_name
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as rs
from fpm_fleet.releases import manifest
from fpm_fleet.releases import store as release
from fpm_fleet.releases.manifest import Entry, Manifest

# --- release names -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["v42", "2024.01.01-1", "release_7", "A.b-C_9", "x" * 100])
def test_validate_name_accepts_simple_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["../x", "a/b", "v1;touch /tmp/x", ".", "..", "", "v 1",
                                  " v1", "v1 ", "$(id)", "v1'", "x" * 101, "v1\tx"])
def test_validate_name_rejects_paths_metacharacters_and_spaces(name):
    with pytest.raises(ConfigError) as info:
        validate_name(name)
    assert repr(name) in str(info.value)
    assert "not allowed" in str(info.value)


def test_validate_name_rejects_a_trailing_newline():
    with pytest.raises(ConfigError):
        validate_name("v1\n")


# --- stored manifests --------------------------------------------------------------------------

def F(path: str, digest: str = "d1", mode: int = 0o644) -> Entry:
    return Entry(path, "f", mode, digest, 10)


def D(path: str, mode: int = 0o755) -> Entry:
    return Entry(path, "d", mode)


def L(path: str, target: str) -> Entry:
    return Entry(path, "l", 0o777, target)


def M(*entries: Entry) -> Manifest:
    return Manifest({e.path: e for e in entries})


def stored(m: Manifest) -> dict[str, Entry]:
    """The base as upload sees it: serialized on the host, parsed back."""
    return release.parse_stored(release.serialize(m))


def test_serialize_writes_kind_octal_mode_digest_and_path_per_line():
    text = release.serialize(M(D("./a"), F("./a/x.php", "abc", 0o640), L("./l", "a/x.php")))
    assert text == "d\t755\t\t./a\nf\t640\tabc\t./a/x.php\nl\t777\ta/x.php\t./l\n"


def test_stored_manifest_roundtrips_everything_but_size():
    m = M(D("./a"), F("./a/x.php", "abc", 0o755), L("./l", "../target"), F("./tab\there", "t"))
    back = stored(m)
    assert list(back) == list(m.entries)
    for path, e in m.entries.items():
        assert (back[path].kind, back[path].mode, back[path].digest) == (e.kind, e.mode, e.digest)


def test_scan_refuses_a_symlink_whose_target_holds_a_tab(tmp_path):
    (tmp_path / "index.php").write_text("<?php\n")
    os.symlink("a\tb", tmp_path / "l")
    with pytest.raises(ConfigError, match="tab or newline"):
        manifest.scan(tmp_path)


def test_parse_stored_ignores_lines_it_does_not_understand():
    text = "f\t644\tabc\t./a\ngarbage\nx\t644\tabc\t./b\n\nd\t755\t\t./c\n"
    assert list(release.parse_stored(text)) == ["./a", "./c"]


# --- the delta plan ----------------------------------------------------------------------------

BASE = M(D("./lib"), F("./index.php", "i1"), F("./lib/a.php", "a1"), F("./lib/b.php", "b1"),
         L("./latest", "lib/a.php"))


def paths(entries: list[Entry]) -> list[str]:
    return [e.path for e in entries]


ALL = sorted(BASE.entries)


def test_first_upload_sends_everything_and_keeps_nothing():
    send, keep = release.plan_delta(BASE, None)
    assert paths(send) == list(BASE.entries)
    assert keep == []


def test_identical_release_sends_only_directories_and_keeps_everything():
    send, keep = release.plan_delta(BASE, stored(BASE))
    assert paths(send) == ["./lib"]
    assert keep == ALL


def test_one_changed_file_is_sent_and_not_kept_from_the_hard_linked_copy():
    new = M(*[F("./lib/a.php", "a2") if p == "./lib/a.php" else e
              for p, e in BASE.entries.items()])
    send, keep = release.plan_delta(new, stored(BASE))
    assert paths(send) == ["./lib", "./lib/a.php"]
    assert keep == [p for p in ALL if p != "./lib/a.php"]


def test_a_deleted_file_is_not_kept_and_nothing_is_sent_for_it():
    new = M(*[e for p, e in BASE.entries.items() if p != "./lib/b.php"])
    send, keep = release.plan_delta(new, stored(BASE))
    assert paths(send) == ["./lib"]
    assert "./lib/b.php" not in keep and "./lib/a.php" in keep


def test_a_mode_change_counts_as_a_change():
    new = M(*[F("./index.php", "i1", 0o755) if p == "./index.php" else e
              for p, e in BASE.entries.items()])
    send, keep = release.plan_delta(new, stored(BASE))
    assert "./index.php" in paths(send)
    assert "./index.php" not in keep


def test_a_symlink_target_change_is_sent_and_not_kept():
    new = M(*[L("./latest", "lib/b.php") if p == "./latest" else e
              for p, e in BASE.entries.items()])
    send, keep = release.plan_delta(new, stored(BASE))
    assert paths(send) == ["./lib", "./latest"]
    assert "./latest" not in keep


def test_a_new_file_is_sent_and_the_rest_kept():
    new = M(*BASE.entries.values(), F("./lib/c.php", "c1"))
    send, keep = release.plan_delta(new, stored(BASE))
    assert paths(send) == ["./lib", "./lib/c.php"]
    assert keep == ALL


def test_a_removed_directory_is_not_kept():
    new = M(F("./index.php", "i1"))
    send, keep = release.plan_delta(new, stored(BASE))
    assert send == []
    assert keep == ["./index.php"]


@pytest.mark.parametrize("replacement", [F("./lib", "now-a-file"), L("./lib", "elsewhere")])
def test_a_directory_replaced_by_another_kind_is_sent_not_kept(replacement):
    new = M(F("./index.php", "i1"), replacement)
    send, keep = release.plan_delta(new, stored(BASE))
    assert "./lib" not in keep
    assert "./lib" in paths(send)


def test_a_file_replaced_by_a_directory_is_sent_not_kept():
    new = M(D("./lib"), D("./index.php"), F("./lib/a.php", "a1"), F("./lib/b.php", "b1"),
            L("./latest", "lib/a.php"))
    send, keep = release.plan_delta(new, stored(BASE))
    assert "./index.php" not in keep
    assert paths(send) == ["./lib", "./index.php"]


# --- cleanup -----------------------------------------------------------------------------------

def infos(*names: str) -> list[release.ReleaseInfo]:
    return [release.ReleaseInfo(n, float(i), 4) for i, n in enumerate(names, 1)]


def test_cleanup_keeps_the_newest_n_and_lists_the_rest_oldest_first():
    assert release.cleanup_candidates(infos("v1", "v2", "v3", "v4", "v5"), 2, set()) == [
        "v1", "v2", "v3"]


def test_cleanup_never_removes_protected_releases():
    got = release.cleanup_candidates(infos("v1", "v2", "v3", "v4", "v5"), 2, {"v1", "v3"})
    assert got == ["v2"]
    assert release.cleanup_candidates(infos("v1", "v2"), 0, {"v1", "v2"}) == []


def test_cleanup_with_fewer_releases_than_keep_removes_nothing():
    assert release.cleanup_candidates(infos("v1", "v2"), 5, set()) == []


def test_cleanup_orders_by_creation_time_not_by_name():
    rels = [release.ReleaseInfo("v10", 300.0, 1), release.ReleaseInfo("v9", 200.0, 1),
            release.ReleaseInfo("v100", 100.0, 1)]
    assert release.cleanup_candidates(rels, 1, set()) == ["v100", "v9"]


def test_cleanup_breaks_time_ties_by_name():
    rels = [release.ReleaseInfo(n, 5.0, 1) for n in ("b", "a", "c")]
    assert release.cleanup_candidates(rels, 1, set()) == ["a", "b"]


# --- upload, lock, activation on a local pool directory --------------------------------------

@pytest.fixture
def build(tmp_path: Path) -> Path:
    src = tmp_path / "build"
    for rel, text in {"index.php": "<?php echo 1;\n", "lib/a.php": "a\n", "lib/b.php": "b\n",
                      "health.php": "ok\n"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    (src / "cache").mkdir()
    os.symlink("lib/a.php", src / "latest.php")
    return src


@pytest.fixture
def target(local_fleet, local_runner):
    host, pool = local_fleet.hosts[0], local_fleet.pools[0]
    return local_runner, host, pool, Layout.of(host, pool)


def tree(path: Path) -> dict[str, str]:
    out = {}
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        out[rel] = ("-> " + os.readlink(p) if p.is_symlink() else
                    "dir" if p.is_dir() else p.read_text())
    return out


def test_first_upload_sends_every_file_verifies_and_commits(target, build):
    ex, host, pool, layout = target
    m = manifest.scan(build)
    up = release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    assert (up.release, up.files, up.sent_files, up.linked_files, up.reused) == (
        "v1", 4, 4, 0, False)
    assert up.bytes_sent > 0
    assert tree(Path(layout.release("v1"))) == tree(build)
    assert Path(rs.manifest_path(layout, "v1")).read_text() == release.serialize(m)
    assert list(Path(layout.incoming).iterdir()) == []


def test_delta_upload_sends_only_changes_and_never_touches_the_base(target, build):
    ex, host, pool, layout = target
    release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v1", base=None)
    (build / "lib" / "a.php").write_text("a changed\n")
    (build / "lib" / "b.php").unlink()
    (build / "health.php").chmod(0o600)
    up = release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v2", base="v1")
    v1, v2 = Path(layout.release("v1")), Path(layout.release("v2"))
    assert (up.sent_files, up.linked_files) == (2, 1)
    assert tree(v2) == tree(build)
    assert (v1 / "lib" / "a.php").read_text() == "a\n"
    assert (v1 / "lib" / "b.php").exists()
    assert (v1 / "health.php").stat().st_mode & 0o777 == 0o644
    assert (v2 / "health.php").stat().st_mode & 0o777 == 0o600
    assert (v2 / "index.php").stat().st_ino == (v1 / "index.php").stat().st_ino


def test_files_a_hook_added_to_the_base_are_not_carried_into_the_next_release(target, build):
    ex, host, pool, layout = target
    release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v1", base=None)
    (Path(layout.release("v1")) / "cache-written-by-a-hook").write_text("x")
    up = release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v2", base="v1")
    assert up.sent_files == 0
    assert tree(Path(layout.release("v2"))) == tree(build)


def test_a_base_changed_in_place_falls_back_to_a_full_upload(target, build):
    ex, host, pool, layout = target
    release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v1", base=None)
    (Path(layout.release("v1")) / "index.php").write_text("edited on the host\n")
    m = manifest.scan(build)
    up = release.upload(HostPool(ex, host, pool), build, m, "v2", base="v1")
    assert up.sent_files == len(m.files) and up.linked_files == 0
    assert tree(Path(layout.release("v2"))) == tree(build)


def test_upload_of_an_identical_existing_release_is_reused(target, build):
    ex, host, pool, _ = target
    m = manifest.scan(build)
    release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    ex.commands.clear()
    up = release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    assert up.reused
    assert up.sent_files == 0
    assert not any("tar -x" in c for c in ex.commands)  # nothing sent, only checked


def test_upload_over_a_different_existing_release_needs_force(target, build):
    ex, host, pool, layout = target
    release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v1", base=None)
    (build / "index.php").write_text("<?php echo 2;\n")
    m2 = manifest.scan(build)
    with pytest.raises(RolloutError, match="already exists with different content"):
        release.upload(HostPool(ex, host, pool), build, m2, "v1", base=None)
    assert Path(layout.release("v1"), "index.php").read_text() == "<?php echo 1;\n"
    release.upload(HostPool(ex, host, pool), build, m2, "v1", base=None, force=True)
    assert Path(layout.release("v1"), "index.php").read_text() == "<?php echo 2;\n"


def test_upload_against_a_base_without_manifest_sends_everything(target, build):
    ex, host, pool, _ = target
    up = release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v2", base="v0")
    assert (up.sent_files, up.linked_files) == (4, 0)


def test_activate_returns_the_previous_release_and_records_history(target):
    ex, host, pool, layout = target
    for name in ("v1", "v2"):
        Path(layout.release(name)).mkdir()
    assert release.activate(HostPool(ex, host, pool), "v1", "fab deploy --release v1") is None
    assert release.activate(HostPool(ex, host, pool), "v2", "fab deploy --release v2") == "v1"
    assert ex.ask(fpm.current_release(HostPool(ex, host, pool))) == "v2"
    hist = release.history(HostPool(ex, host, pool))
    assert [(a.release, a.previous, a.command) for a in hist] == [
        ("v1", None, "fab deploy --release v1"), ("v2", "v1", "fab deploy --release v2")]
    assert all("@" in a.user for a in hist)


def test_bad_marks_roundtrip(target):
    ex, host, pool, _ = target
    assert release.bad_releases(HostPool(ex, host, pool)) == set()
    release.mark_bad(HostPool(ex, host, pool), "v3")
    assert release.bad_releases(HostPool(ex, host, pool)) == {"v3"}


def test_list_releases_orders_by_creation_and_feeds_cleanup(target):
    ex, host, pool, layout = target
    for i, name in enumerate(["v3", "v1", "v2", "v4"]):
        Path(layout.release(name)).mkdir()
        os.utime(layout.release(name), (1_700_000_000 + i, 1_700_000_000 + i))
    rels = release.list_releases(HostPool(ex, host, pool))
    assert [r.name for r in rels] == ["v3", "v1", "v2", "v4"]
    assert release.cleanup_candidates(rels, 2, {"v3"}) == ["v1"]
    release.remove(HostPool(ex, host, pool), ["v1"])
    assert [r.name for r in release.list_releases(HostPool(ex, host, pool))] == ["v3", "v2", "v4"]
