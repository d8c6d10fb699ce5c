"""The `fpm-fleet` command, used from an application's own repository: the same tasks as
`fab`, from any directory, with the same ways of choosing the inventory."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

from tasks import program as cli

ROOT = Path(__file__).resolve().parents[2]

INVENTORY = """
[[hosts]]
name = "{name}"
address = "127.0.0.1"

[pools.www]
replicas = 2
"""


def fpm_fleet(*args: str) -> int:
    """Run the entry point in-process; its exit code (0 when it returns)."""
    try:
        cli.main(["fpm-fleet", *args])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


@pytest.fixture
def app_repo(tmp_path, monkeypatch) -> Path:
    """An application's repository, far from fpm-fleet's checkout, as the current directory."""
    repo = tmp_path / "shop"
    repo.mkdir()
    monkeypatch.chdir(repo)
    monkeypatch.delenv("FABRIC_INVENTORY", raising=False)
    return repo


def test_list_shows_the_tasks_from_any_directory(app_repo, capsys):
    assert fpm_fleet("--list") == 0
    out = capsys.readouterr().out
    for name in ("deploy", "rollback", "status", "stress", "setup", "check"):
        assert f"  {name} " in out


def test_the_inventory_in_the_current_directory_is_read(app_repo, capsys):
    (app_repo / "hosts.toml").write_text(INVENTORY.format(name="from-repo"))
    assert fpm_fleet("list") == 0
    assert "from-repo" in capsys.readouterr().out


def test_fabric_inventory_chooses_the_inventory(app_repo, tmp_path, capsys, monkeypatch):
    path = tmp_path / "elsewhere.toml"
    path.write_text(INVENTORY.format(name="from-env"))
    monkeypatch.setenv("FABRIC_INVENTORY", str(path))
    assert fpm_fleet("list") == 0
    assert "from-env" in capsys.readouterr().out


def test_a_fabric_yaml_in_the_current_directory_chooses_the_inventory(app_repo, tmp_path,
                                                                      capsys):
    path = tmp_path / "deploy" / "fleet.toml"
    path.parent.mkdir()
    path.write_text(INVENTORY.format(name="from-yaml"))
    (app_repo / "fabric.yaml").write_text(f"inventory: {path}\n")
    assert fpm_fleet("list") == 0
    assert "from-yaml" in capsys.readouterr().out


def test_a_bad_inventory_ends_as_with_fab(app_repo, capsys):
    (app_repo / "hosts.toml").write_text(INVENTORY.format(name="a").replace("2", "1"))
    assert fpm_fleet("status") == 2
    assert "pools.www.replicas: must be >= 2" in capsys.readouterr().err


def test_the_console_script_of_the_package_is_this_entry_point():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["fpm-fleet"].split(":")
    assert getattr(importlib.import_module(module), function) is cli.main
