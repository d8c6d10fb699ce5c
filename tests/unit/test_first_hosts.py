"""The hosts a task connects to at start-up (tasks/boundary.py): only once its options are
valid, and never for a deploy whose local work may take long or fail first."""

from __future__ import annotations

from pathlib import Path

import pytest

from fpm_fleet.core.errors import ConfigError, UsageError
from tasks import boundary
from tasks.releases import first_of_deploy, first_of_rollout

DEFAULT = (1, 5, False)  # --canary 1 --parallel 5


@pytest.fixture
def fleet(inventory_data, build_fleet, tmp_path: Path):
    inventory_data["pools"]["www"]["source"] = str(tmp_path)
    return build_fleet(inventory_data)


def names(hosts) -> list[str]:
    return [h.name for h in hosts]


def test_a_rollout_reaches_its_canary_stage_first(fleet):
    assert names(first_of_rollout(None, None, DEFAULT, False, "v2")(fleet)) == ["web1"]
    assert names(first_of_rollout(None, None, (2, 5, False), False)(fleet)) == ["web1", "web2"]
    assert names(first_of_rollout("web2", None, DEFAULT, False)(fleet)) == ["web2"]


def test_a_dry_run_connects_as_it_goes(fleet):
    assert first_of_rollout(None, None, DEFAULT, True, "v2")(fleet) == ()


@pytest.mark.parametrize(("order", "release", "host"), [
    ((0, 5, False), "v2", None),  # --canary 0
    (DEFAULT, "../x", None),  # a release name that is not one
    (DEFAULT, "v2", "web9"),  # an unknown host
])
def test_a_bad_option_is_raised_before_any_host_is_named(fleet, order, release, host):
    with pytest.raises(UsageError if release == "v2" else ConfigError):
        first_of_rollout(host, None, order, False, release)(fleet)
    assert boundary.connect_early(fleet, first_of_rollout(host, None, order, False,
                                                          release)) is None


def test_a_deploy_reaches_its_canary_once_its_request_is_valid(fleet):
    assert names(first_of_deploy(None, None, DEFAULT, False, "v2", None, None)(fleet)) == ["web1"]
    with pytest.raises(UsageError, match="deploy needs --release"):
        first_of_deploy(None, None, DEFAULT, False, "", None, None)(fleet)
    with pytest.raises(ConfigError, match="does not exist"):
        first_of_deploy(None, None, DEFAULT, False, "v2", None, "/nonexistent/src")(fleet)


def test_a_deploy_with_an_export_or_a_build_connects_after_them(inventory_data, build_fleet,
                                                                tmp_path: Path):
    inventory_data["pools"]["www"] |= {"source": str(tmp_path), "build": ["true"],
                                       "repository": str(tmp_path)}
    fleet = build_fleet(inventory_data)
    assert first_of_deploy(None, None, DEFAULT, False, "v2", None, None)(fleet) == ()
    assert first_of_deploy(None, None, DEFAULT, False, "", "main", None)(fleet) == ()


def test_no_first_hosts_start_no_connection(fleet):
    assert boundary.connect_early(fleet, None) is None
    assert boundary.connect_early(fleet, lambda f: ()) is None
