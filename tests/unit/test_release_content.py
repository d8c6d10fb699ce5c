"""Issue 9, release content: what the source may hold, what a release gets on a host, how it
is verified and reused, and what nothing done to a new release may change. Each test runs
the real builders in a local pool directory (sh, as on a host)."""

from __future__ import annotations

import dataclasses
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from fakes import FakePool, dry_run_deploy

from fpm_fleet.core.errors import ConfigError, RolloutError
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as rs
from fpm_fleet.releases import manifest
from fpm_fleet.releases import store as release


@pytest.fixture
def build(tmp_path: Path) -> Path:
    src = tmp_path / "build"
    for rel, text in {"index.php": "<?php echo 1;\n", "lib/a.php": "a\n",
                      "health.php": "ok\n"}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    return src


@pytest.fixture
def target(local_fleet, local_runner):
    host, pool = local_fleet.hosts[0], local_fleet.pools[0]
    return local_runner, host, pool, Layout.of(host, pool)


# --- 1. symlinks that leave the release ----------------------------------------------------

@pytest.mark.parametrize("target", ["/etc", "/var/www/storage", "../outside", "lib/../../x",
                                    "lib/../.."])
def test_scan_refuses_a_symlink_with_an_absolute_or_escaping_target(build, target):
    os.symlink(target, build / "storage")
    with pytest.raises(ConfigError, match=r"\./storage -> .*(absolute|outside the source)"):
        manifest.scan(build)


def test_scan_refuses_a_symlink_that_escapes_only_once_resolved(build):
    # `here -> .` is the source itself; `here/../x` reads as `x` but resolves beside it
    os.symlink(".", build / "lib" / "here")
    os.symlink("here/../../x", build / "lib" / "sneaky")
    with pytest.raises(ConfigError, match=r"\./lib/sneaky -> here/\.\./\.\./x points outside"):
        manifest.scan(build)


def test_scan_accepts_relative_symlinks_inside_the_source(build):
    os.symlink("lib/a.php", build / "latest.php")
    os.symlink("../index.php", build / "lib" / "up.php")
    os.symlink("missing-yet", build / "later")
    m = manifest.scan(build)
    assert m.entries["./lib/up.php"].digest == "../index.php"


def test_a_shared_item_below_a_source_symlink_is_refused(build):
    (build / "var").mkdir()
    os.symlink("var", build / "storage")
    with pytest.raises(ConfigError, match="shared item 'storage/logs' of pool www lies below "
                                          r"the symlink \./storage"):
        manifest.check_shared(manifest.scan(build), ("storage/logs",), "www")
    manifest.check_shared(manifest.scan(build), ("storage", "var/logs"), "www")


def test_link_shared_refuses_a_symlink_above_the_item_and_leaves_its_target_alone(
        sh, layout, tmp_path):
    outside = tmp_path / "somewhere"
    (outside / "logs").mkdir(parents=True)
    (outside / "logs" / "precious").write_text("keep\n")
    rel = Path(layout.release("v1"))
    rel.mkdir()
    os.symlink(outside, rel / "storage")
    result = sh(rs.link_shared(layout, "v1", ("storage/logs",)))
    assert result.returncode == 4
    assert "a directory above it is a symlink" in result.stderr
    assert (outside / "logs" / "precious").read_text() == "keep\n"
    assert not (outside / "logs").is_symlink()


def test_link_shared_stops_at_the_first_failing_step(sh, layout):
    rel = Path(layout.release("v1"))
    rel.mkdir()
    (rel / "storage").write_text("a file where a directory is needed")
    result = sh(rs.link_shared(layout, "v1", ("storage/logs", "cache")))
    assert result.returncode != 0
    assert not (rel / "cache").exists()


# --- 2. modes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "safe"), [(0o4755, 0o755), (0o2755, 0o755), (0o666, 0o644),
                                            (0o777, 0o755), (0o1777, 0o755), (0o640, 0o640)])
def test_safe_mode_drops_setuid_setgid_sticky_and_group_other_write(mode, safe):
    assert manifest.safe_mode(mode) == safe


def test_an_upload_lands_without_setuid_or_group_other_write(target, build):
    ex, host, pool, layout = target
    (build / "bin.sh").write_text("#!/bin/sh\n")
    (build / "bin.sh").chmod(0o4755)
    (build / "index.php").chmod(0o666)
    (build / "open").mkdir()
    (build / "open").chmod(0o777)
    (build / "open" / "x.php").write_text("x")
    m = manifest.scan(build)
    release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    rel = Path(layout.release("v1"))
    modes = {p: stat.S_IMODE((rel / p).stat().st_mode) for p in ("bin.sh", "index.php", "open")}
    assert modes == {"bin.sh": 0o755, "index.php": 0o644, "open": 0o755}
    for path in rel.rglob("*"):
        assert stat.S_IMODE(path.lstat().st_mode) & 0o6022 == 0, path


# --- 3. inherited (hard-linked) files and before_activate hooks ----------------------------

def test_own_copies_gives_the_new_release_its_own_inodes_and_the_old_keeps_its_bytes(
        sh, target, build):
    ex, host, pool, layout = target
    release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v1", base=None)
    (build / "added.php").write_text("new\n")
    up = release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v2", base="v1")
    assert up.linked_files == 3
    old, new = Path(layout.release("v1")), Path(layout.release("v2"))
    (old / "lib" / "a.php").chmod(0o640)
    assert (new / "lib" / "a.php").stat().st_ino == (old / "lib" / "a.php").stat().st_ino
    assert sh(rs.own_copies(layout, "v2")).returncode == 0
    for rel in ("index.php", "lib/a.php", "health.php"):
        assert (new / rel).stat().st_ino != (old / rel).stat().st_ino
        assert (new / rel).read_bytes() == (old / rel).read_bytes()
        assert (new / rel).stat().st_mode == (old / rel).stat().st_mode
    # a hook rewrites in place (`printf x > file`): the old release keeps every byte
    assert sh(f"cd {layout.release('v2')} && printf x > index.php && printf y > lib/a.php"
              ).returncode == 0
    assert (old / "index.php").read_text() == "<?php echo 1;\n"
    assert (old / "lib" / "a.php").read_text() == "a\n"
    assert list(Path(layout.release("v2")).rglob("*.??????")) == []


def test_a_pool_with_hooks_unshares_inherited_files_before_its_first_hook(web, build,
                                                                         monkeypatch):
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    host, pool = web
    with_hooks = dataclasses.replace(pool, before_activate=("composer dump",))
    whats = [p.what for p in dry_run_deploy(FakePool(host, with_hooks), build)]
    assert whats.index("unshare hard links") == whats.index("before_activate composer dump") - 1
    assert "unshare hard links" not in [p.what for p in dry_run_deploy(FakePool(host, pool),
                                                                       build)]


# --- 4. verification: kinds, modes, targets, the complete set of entries -------------------

def staged(ex, layout: Layout, src: Path, m: manifest.Manifest) -> Path:
    ex.run(rs.prepare_staging(layout, "v1", None), "stage")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for e in m.entries.values():
            tar.add(src / e.path, arcname=e.path, recursive=False)
    ex.stream(rs.extract(layout, "v1"), "extract", io.BytesIO(buf.getvalue()))
    return Path(rs.staging(layout, "v1"))


@pytest.mark.parametrize(("change", "problem"), [
    (lambda s: os.mkfifo(s / "lib" / "fifo"), "unexpected: ./lib/fifo"),
    (lambda s: (s / "extra.php").write_text(""), "unexpected: ./extra.php"),
    (lambda s: (s / "health.php").chmod(0o4755), "kind, mode or target differs: ./health.php"),
    (lambda s: (s / "lib").chmod(0o777), "kind, mode or target differs: ./lib"),
    (lambda s: (os.unlink(s / "latest"), os.symlink("index.php", s / "latest")),
     "kind, mode or target differs: ./latest"),
    (lambda s: (s / "lib" / "a.php").unlink(), "missing: ./lib/a.php"),
])
def test_verify_refuses_extra_entries_modes_and_symlink_targets(target, build, change, problem):
    ex, host, _, layout = target
    os.symlink("lib/a.php", build / "latest")
    m = manifest.scan(build)
    stage = staged(ex, layout, build, m)
    release._verify(ex, host, layout, "v1", m)  # as uploaded: verifies
    change(stage)
    with pytest.raises(RolloutError, match="did not verify") as info:
        release._verify(ex, host, layout, "v1", m)
    assert problem in str(info.value)


# --- 5. a same-name release is re-verified before reuse ------------------------------------

def test_a_same_name_release_edited_on_the_host_is_not_silently_reused(target, build):
    ex, host, pool, layout = target
    m = manifest.scan(build)
    release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    assert release.upload(HostPool(ex, host, pool), build, m, "v1", base=None).reused
    (Path(layout.release("v1")) / "index.php").write_text("<?php evil();\n")
    with pytest.raises(RolloutError, match=r"release v1 already exists but was changed on the "
                                           r"host \(content differs: \./index\.php\)"):
        release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    up = release.upload(HostPool(ex, host, pool), build, m, "v1", base=None, force=True)
    assert not up.reused
    assert (Path(layout.release("v1")) / "index.php").read_text() == "<?php echo 1;\n"


def test_a_prepared_release_is_reused_while_it_stays_as_sealed(target, build):
    ex, host, pool, layout = target
    m = manifest.scan(build)
    release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    ex.run(rs.link_shared(layout, "v1", ("storage",)), "link shared")
    (Path(layout.release("v1")) / "cache.php").write_text("written by a hook\n")
    ex.run(rs.seal(layout, "v1"), "seal v1")
    up = release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)
    assert (up.reused, up.prepared) == (True, True)
    (Path(layout.release("v1")) / "cache.php").write_text("edited later\n")
    with pytest.raises(RolloutError, match=r"changed on the host since it was prepared "
                                           r"\(\./cache\.php\)"):
        release.upload(HostPool(ex, host, pool), build, m, "v1", base=None)


def test_an_unprepared_release_is_reused_despite_its_shared_links(target, build):
    ex, host, pool, layout = target
    shared_pool = dataclasses.replace(pool, shared=("lib",))
    m = manifest.scan(build)
    release.upload(HostPool(ex, host, shared_pool), build, m, "v1", base=None)
    ex.run(rs.link_shared(layout, "v1", ("lib",)), "link shared")
    up = release.upload(HostPool(ex, host, shared_pool), build, m, "v1", base=None)
    assert (up.reused, up.prepared) == (True, False)


# --- 6. --force never replaces a release in use ---------------------------------------------

def test_force_refuses_to_replace_a_release_that_is_current_or_pinned(target, build):
    ex, host, pool, layout = target
    release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v1", base=None)
    inode = (Path(layout.release("v1")) / "index.php").stat().st_ino
    (build / "index.php").write_text("<?php echo 2;\n")
    with pytest.raises(RolloutError, match=r"in use .* --force never replaces a release in use"):
        release.upload(HostPool(ex, host, pool), build, manifest.scan(build), "v1", base=None,
                       force=True, in_use=frozenset({"v1"}))
    assert (Path(layout.release("v1")) / "index.php").stat().st_ino == inode
    assert not any("rm -rf" in c and "v1.replaced" in c for c in ex.commands)


# --- 18. non-UTF-8 names ---------------------------------------------------------------------

def test_scan_refuses_a_non_utf8_file_name_naming_it(build):
    bad = os.fsencode(build / "lib") + b"/caf\xe9.php"
    with open(bad, "wb") as fh:
        fh.write(b"x")
    with pytest.raises(ConfigError, match=r"caf\\xe9\.php' is not valid UTF-8"):
        manifest.scan(build)


def test_scan_refuses_a_symlink_to_a_non_utf8_name(build):
    os.symlink(b"caf\xe9.php", os.fsencode(build / "link"))
    with pytest.raises(ConfigError, match=r"\./link points to a name that is not valid UTF-8"):
        manifest.scan(build)


# --- 19. activation history ------------------------------------------------------------------

def test_a_newline_in_a_command_cannot_forge_a_history_entry(target):
    ex, host, pool, layout = target
    for name in ("v1", "v2", "evil"):
        Path(layout.release(name)).mkdir()
    release.activate(HostPool(ex, host, pool), "v1", "fab deploy --release v1")
    forged = "fab deploy\n2026-01-01T00:00:00+0000\tevil\tv1\tmallory@x\tfab deploy"
    release.activate(HostPool(ex, host, pool), "v2", forged)
    hist = release.history(HostPool(ex, host, pool))
    assert [(a.release, a.previous) for a in hist] == [("v1", None), ("v2", "v1")]
    assert hist[1].command == forged
    assert len(Path(layout.state, "history").read_text().splitlines()) == 2


def test_activation_and_its_history_line_are_one_remote_command(target):
    ex, host, pool, layout = target
    Path(layout.release("v1")).mkdir()
    ex.commands.clear()
    release.activate(HostPool(ex, host, pool), "v1", "fab deploy")
    assert len(ex.commands) == 1
    assert "current.release" in ex.commands[0] and "history" in ex.commands[0]


def test_history_keeps_only_well_formed_entries():
    text = ("2026-01-01T00:00:00+0000\tv1\t-\ta@b\tfab deploy\n"
            "garbage\n"
            "2026-01-01T00:00:00+0000\tv2\tv1\ta@b\tfab deploy\textra field\n"
            "yesterday\tv3\tv2\ta@b\tfab deploy\n"
            "2026-01-01T00:00:00+0000\t../x\tv2\ta@b\tfab deploy\n"
            "2026-01-01T00:00:00+0000\tv4\t$(id)\ta@b\tfab deploy\n"
            "2026-01-02T00:00:00\tv5\tv1\ta@b\tfab rollback \\\\n\n")
    hist = release.parse_history(text)
    assert [(a.release, a.previous) for a in hist] == [("v1", None), ("v5", "v1")]
    assert hist[1].command == "fab rollback \\n"
