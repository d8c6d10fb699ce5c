"""fpm_fleet.core.selection: --host / --pool / --replica resolved against the inventory, and
the hosts a rollout reaches first."""

from __future__ import annotations

import pytest

from fpm_fleet.core import selection
from fpm_fleet.core.errors import UsageError


@pytest.fixture
def fleet(inventory_data, build_fleet):
    inventory_data["hosts"].append({"name": "web3", "address": "198.18.0.13"})
    inventory_data["pools"]["api"] = {"replicas": 3}
    return build_fleet(inventory_data)


def names(items) -> list[str]:
    return [i.name for i in items]


def test_no_selector_selects_every_host_pool_and_replica(fleet):
    sel = selection.select(fleet)
    assert names(sel.hosts) == ["web1", "web2", "web3"]
    assert names(sel.pools) == ["www", "api"]
    assert sel.replica is None
    # every slot of a surge pool: the serving set and the standby set
    assert sel.replicas(fleet.pool("api")) == [1, 2, 3, 4, 5, 6]
    assert sel.replicas(fleet.pool("www")) == [1, 2]  # strategy = "rolling": no standby


def test_a_comma_list_of_hosts_keeps_inventory_order(fleet):
    sel = selection.select(fleet, host="web3, web1")
    assert names(sel.hosts) == ["web1", "web3"]


def test_empty_items_in_a_host_list_are_ignored(fleet):
    assert names(selection.select(fleet, host="web2,,").hosts) == ["web2"]
    assert names(selection.select(fleet, host="").hosts) == ["web1", "web2", "web3"]


def test_unknown_host_is_a_usage_error_listing_valid_hosts(fleet):
    with pytest.raises(UsageError) as info:
        selection.select(fleet, host="web1,web9")
    assert str(info.value) == "unknown host 'web9'; valid hosts: web1, web2, web3"
    assert info.value.exit_code == 2


def test_one_pool_can_be_selected(fleet):
    sel = selection.select(fleet, pool="api")
    assert names(sel.pools) == ["api"]
    assert names(sel.hosts) == ["web1", "web2", "web3"]


def test_unknown_pool_is_a_usage_error_listing_valid_pools(fleet):
    with pytest.raises(UsageError) as info:
        selection.select(fleet, pool="wwww")
    assert str(info.value) == "unknown pool 'wwww'; valid pools: www, api"


@pytest.mark.parametrize("replica", [2, "2"])
def test_one_replica_can_be_selected_as_int_or_string(fleet, replica):
    sel = selection.select(fleet, pool="www", replica=replica)
    assert sel.replica == 2
    assert sel.replicas(fleet.pool("www")) == [2]


@pytest.mark.parametrize("replica", [None, "", 0, "0"])
def test_no_or_zero_replica_means_all(fleet, replica):
    assert selection.select(fleet, replica=replica).replica is None


def test_unknown_replica_is_a_usage_error_listing_valid_replicas(fleet):
    with pytest.raises(UsageError) as info:
        selection.select(fleet, pool="www", replica=3)
    assert str(info.value).startswith("unknown replica 3; valid replicas: 1, 2")


def test_a_replica_missing_from_one_of_the_selected_pools_needs_pool(fleet):
    with pytest.raises(UsageError, match="use --pool to pick one pool"):
        selection.select(fleet, replica=3)
    assert selection.select(fleet, pool="api", replica=3).replica == 3


def test_a_non_numeric_replica_is_a_usage_error(fleet):
    with pytest.raises(UsageError, match="--replica must be a number, got 'two'"):
        selection.select(fleet, replica="two")


def test_negative_replica_is_rejected(fleet):
    with pytest.raises(UsageError, match="unknown replica -1"):
        selection.select(fleet, replica=-1)


@pytest.mark.parametrize(("canary", "parallel", "first"), [
    (1, 5, ["web1"]),  # the default: the canary stage is the first host
    (2, 5, ["web1", "web2"]),
    (5, 5, ["web1", "web2", "web3"]),  # never more than the hosts
    (1, 1, ["web1"]),  # one host after another: the first one
])
def test_first_hosts_are_the_canary_stage_or_the_first_host(fleet, canary, parallel, first):
    assert names(selection.first_hosts(fleet.hosts, canary, parallel)) == first


def test_no_hosts_have_no_first_host():
    assert selection.first_hosts((), 1, 5) == ()
