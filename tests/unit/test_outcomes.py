"""What the operator is told when a rollout ends badly: the automatic revert of a host, and
the one-line verdict of a rollout that stopped at a failed host."""

from __future__ import annotations

import pytest

from fpm_fleet.errors import RemoteResult, RolloutError
from fpm_fleet.events import Recorder
from fpm_fleet.rollout import deploy
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout.deploy import Plan, PoolOutcome
from fpm_fleet.rollout.hosts import HostResult

NS = "http://httpd.apache.org"


def manager_page(statuses: list[str]) -> str:
    """balancer-manager's ?xml=1 answer for pool www, one member per status."""
    workers = "".join(
        f"<httpd:worker><httpd:name>unix:/srv/www/run/www-{n}.sock|fcgi://www-{n}</httpd:name>"
        f"<httpd:status>{status}</httpd:status><httpd:busy>0</httpd:busy></httpd:worker>"
        for n, status in enumerate(statuses, start=1))
    return (f"<httpd:manager xmlns:httpd='{NS}'><httpd:balancers><httpd:balancer>"
            f"<httpd:name>balancer://www</httpd:name><httpd:workers>{workers}</httpd:workers>"
            "<httpd:nonce>n</httpd:nonce></httpd:balancer></httpd:balancers></httpd:manager>")


class Host1:
    """An executor for the revert's own commands: activation answers the release it replaced,
    balancer-manager answers the scripted page, everything else succeeds."""

    def __init__(self, host, statuses: list[str]) -> None:
        self.host = host
        self.page = manager_page(statuses)
        self.whats: list[str] = []

    def run(self, command, what, *, check=True, timeout=None):
        self.whats.append(what)
        out = self.page if what.startswith("read balancer-manager") else ""
        return RemoteResult(command, 0, out, "")

    def stream(self, command, what, source, *, timeout=None):
        raise AssertionError("not used")


@pytest.fixture
def failing_then_reverting(monkeypatch):
    """roll_to fails on the new release (a health gate), then succeeds on the old one."""
    calls: list[str] = []

    def roll_to(ex, host, pool, target, obs, timeout, result, numbers=None):
        calls.append(target)
        if target == "v2":
            raise RolloutError(f"{host.name}: www-1 failed its health gate on v2")

    monkeypatch.setattr(deploy, "roll_to", roll_to)
    return calls


def activate_v2(web, statuses: list[str]) -> tuple[RolloutError, PoolOutcome, Host1]:
    host, pool = web
    ex = Host1(host, statuses)
    outcome = PoolOutcome(host.name, pool.name, before="v1")
    with pytest.raises(RolloutError) as info:
        deploy._activate_and_roll(ex, host, pool, Plan("v2", "fab deploy", 5), outcome,
                                  Recorder(), HostResult(host.name))
    return info.value, outcome, ex


def test_after_a_revert_the_host_is_said_to_be_back_on_the_old_release_and_in_rotation(
        web, failing_then_reverting):
    error, outcome, ex = activate_v2(web, ["Init Ok", "Init Ok"])
    assert failing_then_reverting == ["v2", "v1"]
    assert outcome.reverted and outcome.after == "v1"
    assert str(error) == ("web1: www-1 failed its health gate on v2; reverted: web1 is back on "
                          "v1 and in rotation (2 of 2 www replicas serving); v2 is marked bad")
    assert "mark v2 bad" in ex.whats


def test_a_revert_that_left_a_replica_out_says_so(web, failing_then_reverting):
    error, _, _ = activate_v2(web, ["Init Ok", "Init Drn Ok"])
    assert "back on v1 and in rotation" not in str(error)
    assert str(error).endswith("reverted to v1, but only 1 of 2 www replicas on web1 are in "
                               "rotation: see `fab status --host web1`; v2 is marked bad")


def failed(host: str, error: str, code: int = 5) -> HostResult:
    return HostResult(host, ok=False, error=error, reached=True, exit_code=code)


@pytest.mark.parametrize("title", ["stop", "start", "restart", "deploy", "rollback"])
def test_a_stopped_rollout_says_failed_never_stop_stopped(title):
    results = [failed("web1", "web1: www-1 did not drain"), HostResult("web2")]
    with pytest.raises(RolloutError) as info:
        rollout.stopped(title, results)
    assert str(info.value) == (f"{title} failed: web1: www-1 did not drain; "
                               "not reached (untouched): web2")
    assert "stopped" not in str(info.value)


def test_a_stopped_rollout_keeps_the_exit_code_of_its_failure():
    with pytest.raises(RolloutError) as info:
        rollout.stopped("restart", [failed("web1", "web1 (root@x:22): no route to host", 3)])
    assert info.value.exit_code == 3
    assert str(info.value) == "restart failed: web1 (root@x:22): no route to host"


def test_a_rollout_without_failures_raises_nothing():
    rollout.stopped("deploy", [HostResult("web1", reached=True), HostResult("web2")])
