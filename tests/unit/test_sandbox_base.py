"""fpm_fleet.sandbox.base: the apt mirror the base tree is built from, its stamp, debootstrap."""

from __future__ import annotations

from pathlib import Path

import pytest

from fpm_fleet.sandbox import base as sandbox_base

MIRROR = "http://mirror.example/debian"
SECURITY = "http://security.mirror.example/debian-security"

# --- the mirror apt already uses ---------------------------------------------------------------

def test_apt_mirror_reads_a_one_line_sources_list():
    text = (f"# main archive\n"
            f"deb {SECURITY} bookworm-security main\n"
            f"deb {MIRROR} bookworm main contrib non-free-firmware\n"
            f"deb {MIRROR} bookworm-updates main\n")
    assert sandbox_base.apt_mirror([("sources.list", text)]) == MIRROR


def test_apt_mirror_skips_options_comments_and_source_entries_in_one_line_format():
    text = ("deb-src http://src.mirror.example/debian bookworm main\n"
            "# deb http://old.mirror.example/debian bookworm main\n"
            f"deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] {MIRROR} bookworm main"
            "  # the one\n")
    assert sandbox_base.apt_mirror([("sources.list", text)]) == MIRROR


def test_apt_mirror_reads_a_deb822_sources_file():
    text = (f"Types: deb\nURIs: {SECURITY}\nSuites: bookworm-security\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            "\n"
            f"Types: deb deb-src\nURIs: {MIRROR} http://other.mirror.example/debian\n"
            "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    assert sandbox_base.apt_mirror([("debian.sources", text)]) == MIRROR


def test_apt_mirror_parses_each_file_in_the_format_its_name_says():
    deb822 = f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm\nComponents: main\n"
    # a one-line entry in a .sources file is not an entry, nor a deb822 stanza in a .list
    assert sandbox_base.apt_mirror([("a.list", deb822),
                                    ("b.sources", f"deb {MIRROR} bookworm main\n")]) is None
    assert sandbox_base.apt_mirror([("sources.list", ""), ("debian.sources", deb822)]) == MIRROR


def test_apt_mirror_takes_the_first_file_that_has_the_suite():
    first = "deb http://first.mirror.example/debian bookworm main\n"
    second = f"deb {MIRROR} bookworm main\n"
    assert sandbox_base.apt_mirror([("sources.list", first), ("x.list", second)]) == (
        "http://first.mirror.example/debian")


@pytest.mark.parametrize("text", [
    f"deb {MIRROR} bookworm-updates main\n",
    f"deb {MIRROR} bookworm contrib non-free\n",
    f"deb-src {MIRROR} bookworm main\n",
    f"deb {MIRROR} trixie main\n",
    "",
])
def test_apt_mirror_without_a_deb_entry_for_bookworm_main_is_none(text):
    assert sandbox_base.apt_mirror([("sources.list", text)]) is None


def test_apt_mirror_looks_for_the_suite_it_is_asked_for():
    text = f"deb http://old.mirror.example/debian bookworm main\ndeb {MIRROR} trixie main\n"
    assert sandbox_base.apt_mirror([("sources.list", text)], suite="trixie") == MIRROR


# --- the stamp and the build -------------------------------------------------------------------

def test_stamp_is_stable_for_the_same_inputs():
    assert sandbox_base.stamp() == sandbox_base.stamp()
    assert len(sandbox_base.stamp()) == 16


def test_stamp_changes_when_the_package_list_changes(monkeypatch):
    before = sandbox_base.stamp()
    monkeypatch.setattr(sandbox_base, "PACKAGES", (*sandbox_base.PACKAGES, "php8.2-intl"))
    assert sandbox_base.stamp() != before


def test_stamp_changes_when_the_customisation_changes(monkeypatch):
    before = sandbox_base.stamp()
    monkeypatch.setattr(sandbox_base, "CUSTOMISE", sandbox_base.CUSTOMISE + "true\n")
    assert sandbox_base.stamp() != before


def test_debootstrap_builds_a_minimal_bookworm_with_every_package_into_the_target():
    target = Path("/var/cache/fpm fleet/base.new")
    argv = sandbox_base.debootstrap_argv(target, MIRROR)
    assert argv == ["debootstrap", "--variant=minbase",
                    "--include=" + ",".join(sandbox_base.PACKAGES), "bookworm",
                    "/var/cache/fpm fleet/base.new", MIRROR]


def test_the_base_tree_has_systemd_sshd_apache_php_fpm_and_sudo():
    assert {"systemd-sysv", "openssh-server", "apache2", "php8.2-fpm", "libfcgi-bin",
            "sudo"} <= set(sandbox_base.PACKAGES)


@pytest.fixture
def base_dir(tmp_path, monkeypatch) -> Path:
    base = tmp_path / "cache" / "sandbox-base"
    monkeypatch.setattr(sandbox_base, "BASE_DIR", base)
    monkeypatch.setattr(sandbox_base, "machine_mirror", lambda: MIRROR)
    return base


def test_ensure_reuses_a_tree_whose_stamp_matches(base_dir, tmp_path, monkeypatch):
    base_dir.mkdir(parents=True)
    (base_dir / ".fpm-fleet-stamp").write_text(sandbox_base.stamp() + "\n")

    def never(argv: list[str], log: Path, what: str) -> None:
        raise AssertionError(f"rebuilt: {what}")

    monkeypatch.setattr(sandbox_base, "_logged", never)
    assert sandbox_base.ensure(tmp_path / "build.log") == (base_dir, 0.0)


def test_ensure_rebuilds_a_stale_tree_and_stamps_the_new_one(base_dir, tmp_path, monkeypatch):
    base_dir.mkdir(parents=True)
    (base_dir / ".fpm-fleet-stamp").write_text("an older stamp\n")
    (base_dir / "old-file").touch()
    ran: list[str] = []

    def fake(argv: list[str], log: Path, what: str) -> None:
        ran.append(argv[0])
        if argv[0] == "debootstrap":
            Path(argv[4]).mkdir()

    monkeypatch.setattr(sandbox_base, "_logged", fake)
    path, _ = sandbox_base.ensure(tmp_path / "build.log")
    assert path == base_dir
    assert ran == ["debootstrap", "chroot"]
    assert sorted(p.name for p in base_dir.iterdir()) == [".fpm-fleet-stamp"]
    assert (base_dir / ".fpm-fleet-stamp").read_text().strip() == sandbox_base.stamp()
    assert not base_dir.with_name("sandbox-base.new").exists()


def test_purge_removes_the_tree_and_a_half_built_one(base_dir):
    half = base_dir.with_name("sandbox-base.new")
    for d in (base_dir, half):
        d.mkdir(parents=True)
    assert sandbox_base.purge() == [f"removed {base_dir}", f"removed {half}"]
    assert not base_dir.exists() and not half.exists()
    assert sandbox_base.purge() == []
