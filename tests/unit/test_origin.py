"""fpm_fleet.releases.origin: a release's commit recorded beside its manifest on the host,
written and read back by the real shell commands."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest
from conftest import LocalRunner

from fpm_fleet.core.inventory import Fleet
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as rs
from fpm_fleet.releases import origin
from fpm_fleet.releases.origin import Origin
from fpm_fleet.remote.command import action

A, B = "a" * 40, "b" * 64


@pytest.fixture
def at(local_fleet: Fleet, local_runner: LocalRunner) -> HostPool:
    return HostPool(local_runner, local_runner.host, local_fleet.pools[0])


def test_recorded_origins_are_read_back_by_release(at: HostPool) -> None:
    at.ask(action(origin.record(at.layout, "r1", Origin(A, "main")), "record"))
    at.ask(action(origin.record(at.layout, "r2", Origin(B, "v2")), "record"))
    at.ask(action(origin.record(at.layout, "r1", Origin(A, "feature/x")), "record again"))
    assert at.ask(origin.read_all(at.layout)) == {"r1": Origin(A, "feature/x"),
                                                   "r2": Origin(B, "v2")}
    assert not list(Path(at.layout.state / "manifests").glob("*tmp*"))


def test_no_manifests_directory_reads_as_no_origins(tmp_path: Path, sh) -> None:
    layout = Layout(dir=PurePosixPath(tmp_path / "nowhere"), pool="www")
    proc = sh(origin.read_all(layout).text)
    assert proc.returncode == 0 and origin.parse(proc.stdout) == {}


def test_removing_a_release_removes_its_origin(at: HostPool) -> None:
    Path(at.layout.release("r1")).mkdir()
    at.ask(action(origin.record(at.layout, "r1", Origin(A, "main")), "record"))
    at.runner.run(rs.remove_releases(at.layout, ["r1"]), "remove")
    assert at.ask(origin.read_all(at.layout)) == {}


def test_an_origin_without_a_well_formed_commit_is_left_out() -> None:
    text = (f"{origin.MARK} ok\ncommit={A}\nref=main\n"
            f"{origin.MARK} short\ncommit=abc123\n"
            f"{origin.MARK} none\nref=main\n"
            f"{origin.MARK} upper\ncommit={A.upper()}\n"
            f"stray line before nothing\n")
    assert origin.parse(text) == {"ok": Origin(A, "main")}


def test_a_hostile_ref_is_one_quoted_word(at: HostPool, tmp_path: Path) -> None:
    ref = "x'$(touch pwned)`touch pwned`"
    at.ask(action(origin.record(at.layout, "r1", Origin(A, ref)), "record"))
    assert at.ask(origin.read_all(at.layout))["r1"].ref == ref
    assert not (tmp_path / "pwned").exists()
