"""The rollout order (HostGroup.roll): a canary stage that must prove itself, then the rest
of the fleet at most --parallel at once; --sequential; and where the per-host work says
proven(). Hosts here are fakes: the work functions stand for a host's rollout."""

from __future__ import annotations

import _thread
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import EventLog, FakePool, FakeRunner

from fpm_fleet import report
from fpm_fleet.core.errors import ConnectError, RolloutError, UsageError
from fpm_fleet.core.inventory import Fleet, Host
from fpm_fleet.core.selection import canary_stage, roll_options
from fpm_fleet.host.fpm import Process
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases.store import ReleaseInfo
from fpm_fleet.remote.group import (
    GroupResult,
    HostGroup,
    HostOutcome,
    HostState,
    KeptConnections,
    Proven,
    may_start,
)
from fpm_fleet.remote.runner import Interruptible, Runner
from fpm_fleet.rollout import deploy
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout.deploy import Plan, PoolFailed, PoolOutcome
from fpm_fleet.web.balancer import Balancer

W, R, P, D, F = (HostState.WAITING, HostState.RUNNING, HostState.PROVEN, HostState.DONE,
                 HostState.FAILED)
SLOW = 0.2  # long enough for a host that should not start to be seen starting


# --- the pure decisions ------------------------------------------------------------------------

def test_the_options_give_canary_and_parallel_and_sequential_is_one_at_a_time():
    assert roll_options(1, 5, sequential=False) == (1, 5)
    assert roll_options(3, 8, sequential=False) == (3, 8)
    assert roll_options(3, 8, sequential=True) == (1, 1)
    with pytest.raises(UsageError, match="--canary must be at least 1"):
        roll_options(0, 5, sequential=False)
    with pytest.raises(UsageError, match="--parallel must be at least 1"):
        roll_options(1, 0, sequential=False)


def test_the_canary_stage_is_the_first_hosts_and_none_when_hosts_go_one_at_a_time():
    assert canary_stage(5, 1, 5) == range(1)
    assert canary_stage(5, 3, 2) == range(3)
    assert canary_stage(2, 4, 5) == range(2), "never more canaries than hosts"
    assert canary_stage(0, 1, 5) == range(0)
    assert canary_stage(5, 1, 1) == range(0), "sequential: each host waits for the one before"


def test_only_the_canary_starts_until_it_has_proven_itself():
    stage = range(1)
    assert may_start([W, W, W, W], stage, 3) == [0]
    assert may_start([R, W, W, W], stage, 3) == []
    # proven but still draining: it keeps its slot, the others fill the rest
    assert may_start([P, W, W, W], stage, 3) == [1, 2]
    assert may_start([D, W, W, W], stage, 3) == [1, 2, 3]


def test_several_canaries_start_together_within_the_bound_and_all_must_prove():
    stage = range(3)
    assert may_start([W] * 6, stage, 2) == [0, 1]
    assert may_start([P, R, W, W, W, W], stage, 2) == []
    assert may_start([D, P, W, W, W, W], stage, 2) == [2], "the last canary before any other"
    assert may_start([D, D, P, W, W, W], stage, 4) == [3, 4, 5]


def test_the_wave_keeps_at_most_parallel_hosts_in_flight():
    stage = range(1)
    assert may_start([D, R, R, R, W, W], stage, 3) == []
    assert may_start([D, R, D, R, W, W], stage, 3) == [4]
    assert may_start([D, D, D, D, D, D], stage, 3) == []


def test_no_host_starts_once_one_failed():
    assert may_start([F, W, W], range(1), 5) == []
    assert may_start([D, R, F, W, W], range(1), 5) == []
    assert may_start([D, F, W], range(0), 1) == []


def test_sequential_starts_the_next_host_only_once_the_one_before_finished():
    assert may_start([W, W, W], range(0), 1) == [0]
    assert may_start([P, W, W], range(0), 1) == [], "proven is not finished"
    assert may_start([D, W, W], range(0), 1) == [1]


def test_a_host_is_proven_once_and_its_end_overrides():
    assert R.proved() is P
    assert P.proved() is P and D.proved() is D and F.proved() is F
    assert HostState.ended(True) is D and HostState.ended(False) is F


# --- rolls over fake hosts -----------------------------------------------------------------------

@pytest.fixture
def fleet(inventory_data, build_fleet) -> Fleet:
    inventory_data["hosts"] = [{"name": f"web{i}", "address": f"198.18.0.{10 + i}"}
                               for i in range(1, 9)]
    return build_fleet(inventory_data)


@pytest.fixture
def group() -> HostGroup:
    return HostGroup(EventLog(), connector=lambda h: FakeRunner(h))


class Tracker:
    """What the fake hosts did, seen from their threads: the order they started and ended
    in, how many worked at once (at most), and the runner each was given."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []
        self.running = 0
        self.most = 0
        self.runners: dict[str, Runner] = {}
        self.threads: dict[str, threading.Thread] = {}

    @property
    def started(self) -> list[str]:
        with self.lock:
            return [host for what, host in self.log if what == "start"]

    @contextmanager
    def working(self, host: Host, runner: Runner) -> Iterator[None]:
        with self.lock:
            self.log.append(("start", host.name))
            self.runners[host.name] = runner
            self.threads[host.name] = threading.current_thread()
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            yield
        finally:
            with self.lock:
                self.running -= 1
                self.log.append(("end", host.name))


Work = Callable[[Runner, Host, Proven], Any]


def tracked(t: Tracker, body: Callable[[Host, Proven], Any]) -> Work:
    def work(runner: Runner, host: Host, proven: Proven) -> Any:
        with t.working(host, runner):
            return body(host, proven)

    return work


def names(fleet: Fleet, *numbers: int) -> list[str]:
    return [fleet.hosts[n - 1].name for n in numbers]


def test_a_failing_canary_leaves_every_other_host_untouched(fleet, group):
    t = Tracker()

    def body(host: Host, proven: Proven) -> None:
        time.sleep(SLOW)  # long enough for any other host to be seen starting
        raise RolloutError(f"{host.name}: health gate failed; reverted")

    result = group.roll(fleet.hosts, tracked(t, body))
    assert t.started == ["web1"]
    first, *rest = result.outcomes
    assert not first.ok and first.reached and first.canary and first.label == "web1 (canary)"
    assert all(o.ok and not o.reached and not o.canary for o in rest)
    with pytest.raises(RolloutError) as failed:
        result.raise_first_failure("deploy")
    assert str(failed.value) == ("deploy failed on the canary: web1: health gate failed; "
                                 "reverted; not reached (untouched): "
                                 + ", ".join(names(fleet, 2, 3, 4, 5, 6, 7, 8)))


def test_the_wave_starts_once_the_canary_proved_itself_while_it_still_drains(fleet, group):
    t = Tracker()
    wave_started = threading.Event()
    before_proof: list[str] = []

    def body(host: Host, proven: Proven) -> str:
        if host.name == "web1":
            time.sleep(SLOW)  # no other host starts meanwhile
            before_proof.extend(t.started)
            proven()
            # its old replicas drain: the rest of the fleet is already rolling
            if not wave_started.wait(5):
                raise RolloutError("the wave did not start while the canary drained")
            return "drained"
        wave_started.set()
        return "rolled"

    result = group.roll(fleet.hosts, tracked(t, body), parallel=3)
    assert before_proof == ["web1"]
    assert result.ok, result.failed
    assert result.values() == {"web1": "drained", **dict.fromkeys(names(fleet, *range(2, 9)),
                                                                  "rolled")}


def test_a_canary_that_never_calls_proven_passes_when_it_returns(fleet, group):
    t = Tracker()
    result = group.roll(fleet.hosts[:4], tracked(t, lambda host, proven: time.sleep(0.05)),
                        parallel=3)
    assert result.ok
    assert t.log[:2] == [("start", "web1"), ("end", "web1")]
    assert sorted(t.started[1:]) == ["web2", "web3", "web4"]


def test_several_canaries_all_prove_themselves_before_the_wave(fleet, group):
    t = Tracker()
    result = group.roll(fleet.hosts, tracked(t, lambda host, proven: time.sleep(0.05)),
                        canary=3, parallel=8)
    assert result.ok
    ends = [i for i, (what, _) in enumerate(t.log) if what == "end"]
    assert sorted(t.started[:3]) == ["web1", "web2", "web3"]
    assert t.log.index(("start", "web4")) > max(ends[:3]), "the wave waited for all three"
    assert [o.canary for o in result] == [True] * 3 + [False] * 5


def test_at_most_parallel_hosts_work_at_once_the_draining_canary_included(fleet, group):
    t = Tracker()

    def body(host: Host, proven: Proven) -> None:
        proven()  # at once: only the bound holds the wave back
        time.sleep(0.1)

    result = group.roll(fleet.hosts, tracked(t, body), parallel=3)
    assert result.ok and len(t.started) == 8
    assert t.most == 3


def test_a_failing_host_in_the_wave_stops_new_ones_and_those_in_flight_finish(fleet, group):
    t = Tracker()
    failed = threading.Event()

    def body(host: Host, proven: Proven) -> str:
        if host.name == "web1":
            return "canary"
        while len(t.started) < 4:  # web2, web3, web4 are all in flight
            time.sleep(0.01)
        if host.name == "web3":
            failed.set()
            raise RolloutError("web3: health gate failed; reverted")
        failed.wait(5)
        time.sleep(SLOW)  # still working once the run knows web3 failed
        return "finished"

    result = group.roll(fleet.hosts, tracked(t, body), parallel=3)
    assert sorted(t.started) == ["web1", "web2", "web3", "web4"]
    assert [o.host for o in result] == names(fleet, *range(1, 9)), "inventory order"
    assert result.values() == {"web1": "canary", "web2": "finished", "web4": "finished"}
    assert [o.host for o in result.failed] == ["web3"]
    assert [o.host for o in result if not o.reached] == names(fleet, 5, 6, 7, 8)


def test_the_result_keeps_inventory_order_whatever_order_hosts_finish_in(fleet, group):
    t = Tracker()

    def body(host: Host, proven: Proven) -> str:
        time.sleep(0.02 * (9 - int(host.name[3:])))  # the later the host, the sooner done
        return host.name.upper()

    result = group.roll(fleet.hosts, tracked(t, body), parallel=8)
    assert t.log[-1] != ("end", "web8")
    assert [o.host for o in result] == names(fleet, *range(1, 9))
    assert [o.value for o in result] == [n.upper() for n in names(fleet, *range(1, 9))]


def test_hosts_in_threads_get_interruptible_runners(fleet, group):
    t = Tracker()
    group.roll(fleet.hosts[:3], tracked(t, lambda host, proven: None), parallel=2)
    assert all(isinstance(r, Interruptible) for r in t.runners.values())
    assert threading.main_thread() not in t.threads.values()


def test_sequential_goes_one_host_after_another_in_this_thread(fleet, group):
    t = Tracker()

    def body(host: Host, proven: Proven) -> None:
        proven()  # changes nothing: the next host waits for this one to end
        if host.name == "web3":
            raise RolloutError("web3: failed")

    canary, parallel = roll_options(3, 8, sequential=True)
    result = group.roll(fleet.hosts[:5], tracked(t, body), canary=canary, parallel=parallel)
    assert t.log == [(what, h) for h in ("web1", "web2", "web3") for what in ("start", "end")]
    assert t.most == 1
    assert set(t.threads.values()) == {threading.main_thread()}
    assert not any(isinstance(r, Interruptible) for r in t.runners.values())
    assert [o.host for o in result if not o.reached] == ["web4", "web5"]
    assert not any(o.canary for o in result), "no canary stage: none is called one"


def test_an_empty_selection_rolls_nothing(group):
    assert group.roll((), lambda runner, host, proven: None) == GroupResult(())


# --- an interrupt during the wave ------------------------------------------------------------

def test_an_interrupt_during_the_wave_stops_every_host_in_flight_at_its_next_step(
        three_slow_hosts):
    fleet, fakes, sel = three_slow_hosts
    obs = EventLog()
    group = HostGroup(obs, connector=lambda h: fakes[h.name].runner)

    def work(runner: Runner, h: Host, proven: Proven) -> list[str]:
        if h.name == "web3":  # the wave is in flight: Ctrl-C, to the main thread only
            threading.Timer(0.1, _thread.interrupt_main).start()
        return rollout.restart_host(runner, h, sel, obs, 5, proven=proven)

    with pytest.raises(KeyboardInterrupt):
        group.roll(fleet.hosts, work, parallel=3)
    for fake in fakes.values():
        assert fake.serving() == [1, 2], f"{fake.host.name}: a replica was left out"
    assert {e.host for e in obs.events if e.step == "interrupted"} == {"web2", "web3"}
    assert ("web1", "www-2", "enable") in obs.steps(), "the canary finished before the wave"


# --- where the per-host work says proven() --------------------------------------------------

def test_a_restarted_host_is_proven_once_its_last_replica_is_back_in_rotation(web, monkeypatch):
    host, pool = web
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    fake = FakePool(host, pool)
    fake.pinned[2] = "v0"  # an old master: restarted onto v1
    seen: list[tuple[list[int], dict[int, str | None]]] = []
    done = rollout.restart_host(fake.runner, host, rollout.Selection((host,), (pool,)),
                                EventLog(), 5,
                                proven=lambda: seen.append((fake.serving(), dict(fake.pinned))))
    assert done == ["web1/www-1", "web1/www-2"]
    assert seen == [([1, 2], {1: "v1", 2: "v1"})]


def test_a_host_whose_restart_fails_is_never_proven(web, monkeypatch):
    host, pool = web
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    monkeypatch.setattr("fpm_fleet.rollout.replica.time.sleep", lambda s: None)
    fake = FakePool(host, pool)
    fake.unhealthy_releases.add("v1")
    seen: list[str] = []
    with pytest.raises(RolloutError):
        rollout.restart_host(fake.runner, host, rollout.Selection((host,), (pool,)),
                             EventLog(), 5, proven=lambda: seen.append("proven"))
    assert seen == []


@dataclass
class TwoPools:
    """A host with pools www and api, whose deploy, rollback and cleanup only say what they
    were asked (the order of the calls is the point), and call the `proven` they are handed
    once their pool serves (as the real ones do, through converge); pools in `failing`
    fail."""

    host: Host
    sel: rollout.Selection
    calls: list[str] = field(default_factory=list)
    failing: set[str] = field(default_factory=set)

    def step(self, what: str) -> Callable[..., PoolOutcome]:
        def run(at: Any, *args: Any) -> PoolOutcome:
            if at.pool.name in self.failing:
                raise PoolFailed(RolloutError(f"{what} {at.pool.name} failed"), ())
            self.calls.append(f"{what} {at.pool.name}")
            proven = args[2] if len(args) > 2 else None
            if proven is not None:
                proven()
            return PoolOutcome(at.host.name, at.pool.name)

        return run

    def each_pool(self, rollback: bool = False) -> list[PoolOutcome]:
        plans = {p.name: Plan("v2", "fab deploy", 5) for p in self.sel.pools}
        return deploy.each_pool(FakeRunner(self.host), self.host, self.sel, plans, EventLog(),
                                rollback=rollback, proven=lambda: self.calls.append("proven"))


@pytest.fixture
def two_pools(inventory_data, build_fleet, monkeypatch) -> TwoPools:
    inventory_data["pools"]["api"] = {"replicas": 2}
    fleet = build_fleet(inventory_data)
    fake = TwoPools(fleet.hosts[0], rollout.Selection(fleet.hosts[:1], fleet.pools))
    for what in ("deploy", "rollback"):
        monkeypatch.setattr(deploy, f"{what}_pool", fake.step(what))
    return fake


def test_a_deployed_host_is_proven_once_every_pool_serves(two_pools):
    two_pools.each_pool()
    assert two_pools.calls == ["deploy www", "deploy api", "proven"]


def test_a_rolled_back_host_is_proven_once_every_pool_rolled_back(two_pools):
    two_pools.each_pool(rollback=True)
    assert two_pools.calls == ["rollback www", "rollback api", "proven"]


def test_a_host_whose_last_pool_fails_is_never_proven(two_pools):
    two_pools.failing.add("api")
    with pytest.raises(PoolFailed):
        two_pools.each_pool()
    assert two_pools.calls == ["deploy www"]


def test_the_recaps_name_the_canary_and_the_hosts_it_left_untouched(capsys):
    result = GroupResult((
        HostOutcome("web1", error=PoolFailed(RolloutError("web1: gate failed; reverted"), (
            PoolOutcome("web1", "www", "v1", "v1", True, reverted=True),)),
            reached=True, canary=True),
        HostOutcome("web2")))
    report.rollout_recap("deploy", result)
    report.lifecycle_recap("restart", GroupResult((
        HostOutcome("web1", error=RolloutError("web1: gate failed"), reached=True, canary=True),
        HostOutcome("web2"))))
    shown = capsys.readouterr().out
    assert shown.count("web1 (canary)") == 2 and "reverted" in shown
    assert "not reached (untouched)" in shown and "untouched" in shown.split("restart")[-1]


def test_kept_connections_open_one_per_host_for_several_groups_and_close_once(fleet):
    # a rollback reads its targets on every host, then rolls them: one handshake each
    opened: list[str] = []
    closed: list[str] = []

    class Opened(FakeRunner):
        def close(self) -> None:
            closed.append(self.host.name)

    def opener(host: Host, obs: object) -> Any:
        opened.append(host.name)
        return Opened(host, default="ok")

    kept = KeptConnections(EventLog(), opener=opener)
    for parallel in (1, 2):
        group = HostGroup(EventLog(), parallel=parallel, connector=kept.runner)
        result = group.run(fleet.hosts, lambda runner, h: runner.run("true", "say ok").stdout)
        assert result.ok and closed == []  # a group never closes a kept connection
    assert sorted(opened) == sorted(h.name for h in fleet.hosts)
    kept.close()
    assert sorted(closed) == sorted(opened)


class Connections:
    """A connector that records which hosts it connected, and which runners were closed;
    `failing` hosts refuse the connection."""

    def __init__(self, failing: tuple[str, ...] = ()) -> None:
        self.lock = threading.Lock()
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.failing = failing

    def __call__(self, host: Host) -> Runner:
        if host.name in self.failing:
            raise ConnectError(f"{host.name}: connection refused")
        with self.lock:
            self.opened.append(host.name)
        closed = self.closed

        class Closable(FakeRunner):
            def close(self) -> None:
                closed.append(self.host.name)

        return Closable(host, default="ok")


def test_the_wave_is_connected_while_the_canary_rolls_and_each_runner_used_once(fleet):
    conns = Connections()
    group = HostGroup(EventLog(), connector=conns)
    seen_by_canary: list[str] = []
    runners: dict[str, Runner] = {}

    def body(runner: Runner, host: Host, proven: Proven) -> None:
        runners[host.name] = runner
        if host.name == "web1":
            time.sleep(SLOW)  # the wave's handshakes happen meanwhile
            with conns.lock:
                seen_by_canary.extend(conns.opened)

    result = group.roll(fleet.hosts[:4], body, canary=1, parallel=3)
    assert result.ok
    assert sorted(seen_by_canary) == names(fleet, 1, 2, 3, 4)
    assert sorted(conns.opened) == names(fleet, 1, 2, 3, 4), "one connection per host"
    assert sorted(conns.closed) == names(fleet, 1, 2, 3, 4)


def test_a_failing_canary_closes_the_waves_connections_unused(fleet):
    conns = Connections()
    group = HostGroup(EventLog(), connector=conns)
    ran: list[str] = []

    def body(runner: Runner, host: Host, proven: Proven) -> None:
        ran.append(host.name)
        time.sleep(SLOW)
        raise RolloutError(f"{host.name}: health gate failed; reverted")

    result = group.roll(fleet.hosts[:4], body, canary=1, parallel=3)
    assert ran == ["web1"]
    assert all(not o.reached for o in result.outcomes[1:])
    for _ in range(50):  # a handshake still under way is closed once it ends
        if sorted(conns.closed) == sorted(conns.opened):
            break
        time.sleep(0.02)
    assert sorted(conns.closed) == sorted(conns.opened)


def test_a_wave_host_whose_early_connection_failed_fails_at_its_turn(fleet):
    conns = Connections(failing=("web3",))
    group = HostGroup(EventLog(), connector=conns, stop_on_failure=False)
    ran: list[str] = []
    result = group.roll(fleet.hosts[:3], lambda runner, h, proven: ran.append(h.name),
                        canary=1, parallel=3)
    assert ran == ["web1", "web2"]
    third = result.outcomes[2]
    assert not third.ok and not third.reached and "connection refused" in str(third.error)


# --- the cleanup a deploy decides from its preflight --------------------------------------------

def _preflight(current: str, names: list[str], pinned: dict[int, str]) -> rollout.Preflight:
    procs = {n: Process(n, 100 + n, "S", 5, "php-fpm: master", f"/srv/x/releases/{rel}")
             for n, rel in pinned.items()}
    return rollout.Preflight(current, [], Balancer("www", "nonce", ()), procs,
                             [ReleaseInfo(n, 1_700_000_000 + i, 0) for i, n in enumerate(names)])


def test_a_deploy_keeps_the_newest_counting_itself_and_what_ran_before():
    pf = _preflight("v4", ["v1", "v2", "v3", "v4", "v5"], {1: "v4", 3: "v2"})
    # v6 and v5 are the newest two; v4 was current (now previous), v2 still ran (parked)
    assert deploy.superseded(pf, "v6", 2) == ["v1", "v3"]


def test_redeploying_a_present_release_counts_it_once():
    pf = _preflight("v3", ["v1", "v2", "v3"], {})
    assert deploy.superseded(pf, "v1", 1) == ["v2"]
    assert deploy.superseded(pf, "v3", 1) == ["v1", "v2"]


def test_a_cleanup_that_fails_after_a_deploy_is_said_and_the_deploy_stands(web):
    host, pool = web
    runner = FakeRunner(host, ("remove ", (1, "", "mv: Permission denied")))
    obs = EventLog()
    pf = _preflight("v4", ["v1", "v2", "v3", "v4"], {})
    plan = Plan("v5", "fab deploy", 5)
    at = HostPool(runner, dataclasses.replace(host, keep_releases=3), pool)
    assert deploy._cleanup_after(at, plan, pf, obs) == []
    assert runner.whats == ["remove v1, v2"]  # keep_releases 3: v5, v4, v3 stay
    warned = [e for e in obs.events if e.kind == "warn" and e.step == "cleanup"]
    assert warned and "Permission denied" in warned[0].detail and "v5 serves" in warned[0].detail
