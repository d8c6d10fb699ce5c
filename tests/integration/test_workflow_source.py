"""Deploys from git on a 2-host fleet, chosen as a stage: `fab deploy --ref` exports the
revision on this machine (the hosts have no git), runs the pool's build in the export,
names the release from the time and the commit, and records the commit on every host
(`releases`, `status`). A bad ref, an unreachable repository or a failing build stop the
deploy before any host is touched."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from fpm_fleet.sandbox import demo

from .conftest import Sandbox, fab, get, ok


@pytest.fixture(scope="module")
def box(fleet2: Sandbox) -> Sandbox:
    return fleet2


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo app (release text `git1`) committed on main, plus an uncommitted change."""
    work = demo.build(tmp_path_factory.mktemp("repo") / "app", "git1")
    git(work, "init", "-q", "-b", "main")
    git(work, "add", "-A")
    git(work, "commit", "-q", "-m", "the demo app")
    (work / "release.txt").write_text("uncommitted\n")
    return work


def staging(box: Sandbox, directory: Path, repository: str, build: str) -> Path:
    """A stage file extending the sandbox's inventory (hosts, keys, pool) with a repository
    and a build step."""
    path = directory / "stages" / "staging.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(f'extends = "{box.path}"\n[pools.www]\nrepository = "{repository}"\n'
                    f"build = {build}\n")
    return path


BUILD = '["printf %s \\"$FPM_FLEET_COMMIT\\" > commit.txt", "rm -f sleep.php"]'


def test_a_ref_is_exported_built_named_and_recorded_on_every_host(
        box: Sandbox, repo: Path, tmp_path: Path) -> None:
    commit = git(repo, "rev-parse", "main")
    stage = staging(box, tmp_path, str(repo), BUILD)
    before = host_state(box)
    plan = ok(fab("deploy", "--ref", "main", "--dry-run", inventory_path=stage))
    assert "[record the commit of " in plan.stdout and host_state(box) == before
    proc = ok(fab("deploy", "--ref", "main", "--plain", inventory_path=stage))
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"stage: staging ({stage})" and lines[-2] == lines[0]
    (name,) = set(re.findall(rf"\b(\d{{8}}-\d{{6}}-{commit[:10]})\b", proc.stdout))
    for i, address in enumerate(box.addresses()):
        assert get(address, "/commit.txt") == (200, commit)  # the build ran in the export
        assert get(address, "/release.txt") == (200, "git1\n")  # committed, not the work tree
        assert not (box.pool_dir(i) / "releases" / name / "sleep.php").exists()
        assert os.readlink(box.pool_dir(i) / "current.release") == f"releases/{name}"
        origin = (box.pool_dir(i) / "state" / "manifests" / f"{name}.origin").read_text()
        assert origin == f"commit={commit}\nref=main\n"
    assert not (repo / "commit.txt").exists() and (repo / "sleep.php").exists()
    listing = ok(fab("releases", inventory_path=stage)).stdout
    assert listing.count(commit[:10]) >= 4  # name and commit column, on both hosts
    rows = box.status()
    assert {r["commit"] for r in rows if r["release"]} == {commit}


def host_state(box: Sandbox) -> list[tuple[str, ...]]:
    """What a deploy would change on each host: releases, current, history, lock, incoming."""
    out = []
    for i in range(len(box.fleet.hosts)):
        d = box.pool_dir(i)
        out.append((os.readlink(d / "current.release"),
                    *sorted(p.name for p in (d / "releases").iterdir()),
                    (d / "state" / "history").read_text(),
                    *sorted(p.name for p in (d / "state").iterdir()),
                    *sorted(p.name for p in (d / "incoming").iterdir())))
    return out


@pytest.mark.parametrize("case", ["bad ref", "unreachable", "failing build"])
def test_a_bad_source_exits_7_and_touches_no_host(box: Sandbox, repo: Path, tmp_path: Path,
                                                  case: str) -> None:
    repository, ref, build = str(repo), "main", BUILD
    if case == "bad ref":
        ref = "no-such-branch"
    elif case == "unreachable":
        repository = str(tmp_path / "gone")
    else:
        build = '["echo compiling", "echo assets failed >&2; exit 3"]'
    stage = staging(box, tmp_path, repository, build)
    before = host_state(box)
    proc = fab("deploy", "--ref", ref, "--plain", inventory_path=stage)
    assert proc.returncode == 7, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    expected = {"bad ref": "error: ref 'no-such-branch' names no commit",
                "unreachable": f"error: repository {tmp_path / 'gone'} could not be read",
                "failing build": "error: build of pool www: `echo assets failed >&2; exit 3` "
                                 "failed (exit 3): assets failed"}[case]
    assert error and error[0].startswith(expected), proc.stderr
    assert "[h1]" not in proc.stderr and "[h2]" not in proc.stderr
    assert host_state(box) == before
