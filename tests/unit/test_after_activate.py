"""after_activate: the command it builds, running it for real in a release directory, a
failure returned (never raised) with its secrets masked, and where a deploy runs it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fakes import EventLog, FakeRunner

from fpm_fleet.core.errors import ConfigError, RolloutError
from fpm_fleet.host.pool import HostPool
from fpm_fleet.rollout import deploy, hooks


def at_with(runner, host, pool, *commands: str) -> HostPool:
    return HostPool(runner, host, dataclasses.replace(pool, after_activate=commands))


def test_the_command_runs_sh_inside_the_release_and_is_shown_masked(web):
    host, pool = web
    cmd = hooks.command(HostPool(FakeRunner(host), host, pool), "v2",
                        "QUEUE_TOKEN=abc php artisan queue:restart")
    assert cmd.text == ("cd -- /srv/fpm-fleet/www/releases/v2 && "
                        "sh -c 'QUEUE_TOKEN=abc php artisan queue:restart'")
    assert cmd.display == ("cd -- /srv/fpm-fleet/www/releases/v2 && "
                           "sh -c 'QUEUE_TOKEN=*** php artisan queue:restart'")
    assert cmd.changes and cmd.what == "after_activate QUEUE_TOKEN=*** php artisan queue:restart"


def test_commands_run_in_order_in_the_release_directory(local_runner, local_fleet):
    host, pool = local_fleet.hosts[0], local_fleet.pools[0]
    at = at_with(local_runner, host, pool, "pwd -P > first", "cat first > second")
    Path(at.layout.release("v2")).mkdir()
    obs = EventLog()
    outcome = hooks.after_activate(at, "v2", obs)
    assert outcome == hooks.HookOutcome("v2", 2)
    release = Path(at.layout.release("v2"))
    assert (release / "second").read_text().strip() == str(release.resolve())
    assert obs.steps() == [("local", "www", "after_activate")] * 2


def test_a_failing_command_is_returned_with_its_reason_and_stops_the_rest(local_runner,
                                                                          local_fleet):
    host, pool = local_fleet.hosts[0], local_fleet.pools[0]
    at = at_with(local_runner, host, pool, "true",
                 "echo API_KEY=s3cr3t refused >&2; API_KEY=s3cr3t exit 7", "touch never")
    Path(at.layout.release("v2")).mkdir()
    outcome = hooks.after_activate(at, "v2", EventLog())
    assert outcome is not None and not outcome.ok and outcome.ran == 1
    assert outcome.failed == ("`echo API_KEY=*** refused >&2; API_KEY=*** exit 7` failed "
                              "(exit 7): API_KEY=*** refused; v2 still serves")
    assert "s3cr3t" not in outcome.text
    assert not Path(at.layout.release("v2"), "never").exists()


def test_a_pool_without_after_activate_runs_nothing(web):
    host, pool = web
    runner = FakeRunner(host, default=None)
    assert hooks.after_activate(HostPool(runner, host, pool), "v2", EventLog()) is None
    assert runner.calls == []


def test_a_deploy_runs_after_activate_once_the_roll_is_done(web, monkeypatch):
    host, pool = web
    runner = FakeRunner(host, ("after_activate", (1, "", "nope")))
    order: list[str] = []
    monkeypatch.setattr(deploy, "converge", lambda *a, **k: order.append("converge"))
    monkeypatch.setattr(deploy.release, "activate", lambda *a, **k: order.append("activate"))
    plan = deploy.Plan(release="v2", command="fab deploy", timeout=1)
    record = deploy._activate_and_roll(at_with(runner, host, pool, "restart-workers"), plan,
                                       deploy.PoolOutcome("web1", "www", before="v1"),
                                       EventLog())
    assert order == ["activate", "converge"] and runner.whats == ["after_activate restart-workers"]
    assert record.after == "v2" and not record.reverted  # a failing hook undoes nothing
    assert record.after_activate is not None and record.after_activate.failed is not None


def test_an_automatic_revert_runs_after_activate_for_the_release_serving_again(web,
                                                                                monkeypatch):
    host, pool = web
    runner = FakeRunner(host)
    targets: list[str] = []

    def converge(at, target, *a, **k):
        targets.append(target)
        if target == "v2":
            raise RolloutError("web1: www-1 failed its health gate")

    monkeypatch.setattr(deploy, "converge", converge)
    monkeypatch.setattr(deploy.release, "activate", lambda *a, **k: None)
    monkeypatch.setattr(deploy.release, "mark_bad", lambda *a, **k: None)
    monkeypatch.setattr(deploy, "revert", lambda at, plan, before, obs: at.pool.replicas)
    plan = deploy.Plan(release="v2", command="fab deploy", timeout=1)
    with pytest.raises(deploy.PoolFailed) as info:
        deploy._activate_and_roll(at_with(runner, host, pool, "restart-workers"), plan,
                                  deploy.PoolOutcome("web1", "www", before="v1"), EventLog())
    (record,) = info.value.outcomes
    assert record.reverted and record.after_activate == hooks.HookOutcome("v1", 1)
    assert runner.commands == ["cd -- /srv/fpm-fleet/www/releases/v1 && sh -c restart-workers"]


def test_after_activate_is_a_pool_key(inventory_data, build_fleet):
    assert build_fleet(inventory_data).pool("www").after_activate == ()
    inventory_data["pools"]["www"]["after_activate"] = ["php artisan queue:restart"]
    assert build_fleet(inventory_data).pool("www").after_activate == (
        "php artisan queue:restart",)
    inventory_data["pools"]["www"]["after_activate"] = "php artisan queue:restart"
    with pytest.raises(ConfigError, match=r"pools\.www\.after_activate: must be a list"):
        build_fleet(inventory_data)

