"""What the operator is told when a rollout ends badly: the automatic revert of a host, and
the one-line verdict of a rollout that stopped at a failed host."""

from __future__ import annotations

import pytest
from fakes import EventLog, FakeRunner, manager_page

from fpm_fleet.core.errors import ConnectError, RolloutError
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.remote.group import GroupResult, HostOutcome
from fpm_fleet.rollout import deploy
from fpm_fleet.rollout.deploy import Plan, PoolFailed, PoolOutcome


@pytest.fixture
def failing_then_reverting(monkeypatch):
    """roll_to fails on the new release (a health gate), then succeeds on the old one."""
    calls: list[str] = []

    def roll_to(at, target, obs, timeout):
        calls.append(target)
        if target == "v2":
            raise RolloutError(f"{at.host.name}: www-1 failed its health gate on v2")
        return []

    monkeypatch.setattr(deploy, "roll_to", roll_to)
    return calls


def activate_v2(web, statuses: list[str]) -> tuple[PoolFailed, FakeRunner]:
    """The revert's own commands: balancer-manager answers the scripted page, everything
    else succeeds."""
    host, pool = web
    page = manager_page(pool, Layout.of(host, pool), dict(enumerate(statuses, start=1)))
    runner = FakeRunner(host, ("read balancer-manager", page))
    outcome = PoolOutcome(host.name, pool.name, before="v1")
    with pytest.raises(PoolFailed) as info:
        deploy._activate_and_roll(HostPool(runner, host, pool), Plan("v2", "fab deploy", 5),
                                  outcome, EventLog())
    return info.value, runner


def test_after_a_revert_the_host_is_said_to_be_back_on_the_old_release_and_in_rotation(
        web, failing_then_reverting):
    error, runner = activate_v2(web, ["Init Ok", "Init Ok"])
    assert failing_then_reverting == ["v2", "v1"]
    (outcome,) = error.outcomes
    assert outcome.reverted and outcome.after == "v1" and outcome.passed_point_of_no_return
    assert isinstance(error, RolloutError) and error.exit_code == 5
    assert str(error) == ("web1: www-1 failed its health gate on v2; reverted: web1 is back on "
                          "v1 and in rotation (2 of 2 www replicas serving); v2 is marked bad")
    assert "mark v2 bad" in runner.whats
    assert runner.whats.index("activate v2") < runner.whats.index("activate v1")


def test_a_revert_that_left_a_replica_out_says_so(web, failing_then_reverting):
    error, _ = activate_v2(web, ["Init Ok", "Init Drn Ok"])
    assert "back on v1 and in rotation" not in str(error)
    assert str(error).endswith("reverted to v1, but only 1 of 2 www replicas on web1 are in "
                               "rotation: see `fab status --host web1`; v2 is marked bad")


def failed(host: str, error: Exception) -> HostOutcome[list[str]]:
    return HostOutcome(host, error=error, reached=True)  # type: ignore[arg-type]


@pytest.mark.parametrize("title", ["stop", "start", "restart", "deploy", "rollback"])
def test_a_stopped_rollout_says_failed_never_stop_stopped(title):
    results = GroupResult((failed("web1", RolloutError("web1: www-1 did not drain")),
                           HostOutcome("web2")))
    with pytest.raises(RolloutError) as info:
        results.raise_first_failure(title)
    assert str(info.value) == (f"{title} failed: web1: www-1 did not drain; "
                               "not reached (untouched): web2")
    assert "stopped" not in str(info.value)


def test_a_stopped_rollout_keeps_the_exit_code_of_its_failure():
    results = GroupResult((failed("web1", ConnectError("web1 (root@x:22): no route to host")),))
    with pytest.raises(RolloutError) as info:
        results.raise_first_failure("restart")
    assert info.value.exit_code == 3
    assert str(info.value) == "restart failed: web1 (root@x:22): no route to host"


def test_a_rollout_without_failures_raises_nothing():
    GroupResult((HostOutcome("web1", value=["web1/www-1"], reached=True),
                 HostOutcome("web2"))).raise_first_failure("deploy")
