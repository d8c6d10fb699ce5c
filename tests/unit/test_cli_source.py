"""`fab deploy --ref` and the build step as an operator meets them when they fail (no host
is touched: the one host here is a local port that counts connections), and stages chosen
with FABRIC_STAGE, named first and last by every run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_cli import INVENTORY, errors, fab, inventory, listening
from test_source import run_git

FPM_FLEET = str(Path(sys.executable).with_name("fpm-fleet"))


def app_repo(tmp_path: Path) -> Path:
    work = tmp_path / "app"
    work.mkdir()
    run_git(work, "init", "-q", "-b", "main")
    (work / "index.php").write_text("<?php echo 'hi';\n")
    run_git(work, "add", "-A")
    run_git(work, "commit", "-q", "-m", "one")
    return work


def deploy_failing_before_any_host(tmp_path: Path, pool_keys: str, *args: str
                                   ) -> tuple[subprocess.CompletedProcess[str], str]:
    with listening() as (port, accepted):
        text = INVENTORY.format(name="alpha").replace("port = 9", f"port = {port}")
        path = inventory(tmp_path, text=text + pool_keys)
        proc = fab("deploy", *args, env={"FABRIC_INVENTORY": str(path)})
        assert not accepted, "a host was contacted"
    (error,) = errors(proc.stderr)
    return proc, error


def test_an_unknown_ref_exits_7_naming_the_ref_before_any_host(tmp_path: Path) -> None:
    repo = app_repo(tmp_path)
    proc, error = deploy_failing_before_any_host(tmp_path, f'repository = "{repo}"\n',
                                                 "--ref", "nope")
    assert proc.returncode == 7
    assert error == f"error: ref 'nope' names no commit of {repo} (branches and tags there: main)"


def test_an_unreachable_repository_exits_7_before_any_host(tmp_path: Path) -> None:
    proc, error = deploy_failing_before_any_host(
        tmp_path, 'repository = "https://deploy:s3cret@127.0.0.1:9/app.git"\n', "--ref", "main")
    assert proc.returncode == 7
    assert error.startswith("error: repository https://deploy:***@127.0.0.1:9/app.git could "
                            "not be read: ")
    assert "s3cret" not in proc.stderr


def test_a_failing_build_exits_7_before_any_host_and_its_output_is_in_the_log(
        tmp_path: Path) -> None:
    repo = app_repo(tmp_path)
    keys = f'repository = "{repo}"\nbuild = ["echo building-it", "echo oops >&2; exit 4"]\n'
    proc, error = deploy_failing_before_any_host(tmp_path, keys, "--ref", "main")
    assert proc.returncode == 7
    assert error == "error: build of pool www: `echo oops >&2; exit 4` failed (exit 4): oops"
    log = Path(proc.stderr.strip().splitlines()[-1].removeprefix("log: ")).read_text()
    assert "building-it" in log and "oops" in log
    assert run_git(repo, "status", "--porcelain") == ""


def test_ref_and_source_together_are_refused(tmp_path: Path) -> None:
    proc, error = deploy_failing_before_any_host(tmp_path, 'repository = "/nowhere"\n',
                                                 "--ref", "main", "--source", str(tmp_path))
    assert proc.returncode == 2 and "--ref and --source exclude each other" in error


def test_fabric_stage_chooses_the_stage_file_and_every_run_names_it_first_and_last(
        tmp_path: Path) -> None:
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "common.toml").write_text(
        "[defaults]\nport = 9\nconnect_timeout = 1\n[pools.www]\nreplicas = 2\n")
    (tmp_path / "stages" / "staging.toml").write_text(
        'extends = "common.toml"\n[[hosts]]\nname = "stage1"\naddress = "127.0.0.1"\n')
    env = {k: v for k, v in os.environ.items() if k != "FABRIC_INVENTORY"}
    proc = subprocess.run([FPM_FLEET, "list"], cwd=tmp_path,
                          env={**env, "FABRIC_STAGE": "staging"}, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "stage1" in proc.stdout
    lines = proc.stderr.strip().splitlines()
    shown = "stage: staging (stages/staging.toml)"
    assert lines[0] == shown and lines[-2] == shown and lines[-1].startswith("log: ")
    wrong = subprocess.run([FPM_FLEET, "list"], cwd=tmp_path,
                           env={**env, "FABRIC_STAGE": "prod"}, capture_output=True, text=True,
                           timeout=60, check=False)
    assert wrong.returncode == 2
    assert "stage 'prod': stages/prod.toml not found (stages here: common, staging)" in \
        wrong.stderr
