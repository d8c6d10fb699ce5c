"""fpm_fleet.core.stages: one inventory per stage, sharing a file it extends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fpm_fleet.core import inventory, stages
from fpm_fleet.core.errors import ConfigError

COMMON = """
log_dir = "logs"
[defaults]
user = "deploy"
keep_releases = 4
[defaults.apache]
listen = "*:80"
[pools.www]
replicas = 2
server_name = "www.example.com"
source = "build/www"
repository = "../app"
shared = ["storage", "var/log"]
build = ["composer install --no-dev"]
"""

STAGING = """
extends = "common.toml"
[defaults]
keep_releases = 3
[[hosts]]
name = "stage1"
address = "10.0.0.5"
[pools.www]
server_name = "staging.example.com"
shared = ["storage"]
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path / "deploy" / "common.toml", COMMON)
    write(tmp_path / "deploy" / "staging.toml", STAGING)
    return tmp_path


def test_a_stage_is_laid_over_the_file_it_extends(project: Path) -> None:
    fleet = inventory.load(project / "deploy" / "staging.toml")
    www, host = fleet.pools[0], fleet.hosts[0]
    assert (host.name, host.user, host.keep_releases) == ("stage1", "deploy", 3)
    assert www.server_name == "staging.example.com"
    assert www.shared == ("storage",)  # a list is replaced whole, never appended to
    assert (www.replicas, www.build) == (2, ("composer install --no-dev",))
    assert host.apache.listen == "*:80"


def test_relative_paths_are_taken_from_the_file_that_writes_them(tmp_path: Path) -> None:
    write(tmp_path / "shared" / "common.toml", COMMON)
    write(tmp_path / "stages" / "prod.toml", STAGING.replace('"common.toml"',
                                                              '"../shared/common.toml"'))
    fleet = inventory.load(tmp_path / "stages" / "prod.toml")
    assert fleet.pools[0].source == str(tmp_path / "shared" / "build" / "www")
    assert fleet.pools[0].repository == str(tmp_path / "app")
    assert fleet.log_dir == str(tmp_path / "shared" / "logs")


def test_a_url_repository_is_kept_as_written(project: Path) -> None:
    for url in ("https://git.example.com/shop.git", "git@git.example.com:shop.git",
                "ssh://git@git.example.com/shop.git"):
        write(project / "deploy" / "common.toml", COMMON.replace('"../app"', f'"{url}"'))
        assert inventory.load(project / "deploy" / "staging.toml").pools[0].repository == url


def test_extends_chains_and_takes_a_list_later_files_winning(project: Path) -> None:
    write(project / "deploy" / "site.toml", "[defaults]\nuser = 'ops'\nport = 2222\n")
    write(project / "deploy" / "prod.toml",
          'extends = ["common.toml", "site.toml"]\n[[hosts]]\nname = "p1"\naddress = "p1"\n')
    host = inventory.load(project / "deploy" / "prod.toml").hosts[0]
    assert (host.user, host.port, host.keep_releases) == ("ops", 2222, 4)


def test_the_stage_file_may_extend_a_file_that_extends_another(project: Path) -> None:
    write(project / "deploy" / "staging-eu.toml",
          'extends = "staging.toml"\n[pools.www]\nserver_name = "eu.staging.example.com"\n')
    fleet = inventory.load(project / "deploy" / "staging-eu.toml")
    assert (fleet.hosts[0].name, fleet.pools[0].server_name) == ("stage1",
                                                                 "eu.staging.example.com")


def test_a_loop_of_extends_is_refused(project: Path) -> None:
    write(project / "deploy" / "common.toml", 'extends = "staging.toml"\n' + COMMON)
    with pytest.raises(ConfigError, match="extends: a loop"):
        inventory.load(project / "deploy" / "staging.toml")


def test_a_missing_extended_file_names_the_file(project: Path) -> None:
    (project / "deploy" / "common.toml").unlink()
    with pytest.raises(ConfigError, match=r"common\.toml: a file it extends not found"):
        inventory.load(project / "deploy" / "staging.toml")


@pytest.mark.parametrize("value", ["3", "[1]", '[""]'])
def test_extends_must_name_files(project: Path, value: str) -> None:
    write(project / "deploy" / "staging.toml", f"extends = {value}\n" + STAGING.split("\n", 2)[2])
    with pytest.raises(ConfigError, match="extends: must be a file name"):
        inventory.load(project / "deploy" / "staging.toml")


def test_a_mistake_in_the_shared_file_is_still_named_by_key(project: Path) -> None:
    write(project / "deploy" / "common.toml", COMMON.replace("replicas = 2", "replica = 2"))
    with pytest.raises(ConfigError, match=r"pools.www.replica: unknown key; did you mean"):
        inventory.load(project / "deploy" / "staging.toml")


def test_merge_replaces_everything_but_tables() -> None:
    assert stages.merge({"a": {"x": 1, "y": [1]}, "b": 1}, {"a": {"y": [2]}, "b": {"z": 1}}) \
        == {"a": {"x": 1, "y": [2]}, "b": {"z": 1}}


def test_the_stage_name_is_the_file_name() -> None:
    assert stages.stage_name("stages/production.toml") == "production"


def test_choosing_a_stage_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "stages" / "staging.toml", STAGING)
    write(tmp_path / "stages" / "production.toml", STAGING)
    assert stages.choose("hosts.toml", "staging", "hosts.toml") == os.path.join("stages",
                                                                                 "staging.toml")
    assert stages.choose("other.toml", "", "hosts.toml") == "other.toml"
    with pytest.raises(ConfigError, match=r"stage 'prod': stages/prod.toml not found "
                                          r"\(stages here: production, staging\)"):
        stages.choose("hosts.toml", "prod", "hosts.toml")
    with pytest.raises(ConfigError, match="set FABRIC_STAGE or FABRIC_INVENTORY, not both"):
        stages.choose("other.toml", "staging", "hosts.toml")
    with pytest.raises(ConfigError, match="a stage name is"):
        stages.choose("hosts.toml", "../x", "hosts.toml")
