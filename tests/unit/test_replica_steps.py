"""The steps of a replica restart over a simulated pool (fakes.FakePool): the guard's
decisions, the wait for idle with a stuck Busy, the automatic revert of a deploy whose new
release fails its health gate, the recovery of a replica an interrupt left drained, and the
dry run of a restart."""

from __future__ import annotations

import threading

import pytest
from fakes import EventLog, FakePool

from fpm_fleet.core.errors import RolloutError
from fpm_fleet.host import fpm
from fpm_fleet.host.pool import HostPool
from fpm_fleet.remote.dryrun import Recorder
from fpm_fleet.remote.runner import Interrupted, Interruptible
from fpm_fleet.rollout import deploy, replica
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout.deploy import Plan, PoolFailed, PoolOutcome
from fpm_fleet.web import apache


class Clock:
    """Stands in for the time module inside replica: sleeping advances the clock; `then`
    runs after each sleep (the world changing meanwhile)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []
        self.then = lambda: None

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept.append(seconds)
        self.then()


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake_time = Clock()
    monkeypatch.setattr(replica, "time", fake_time)
    return fake_time


@pytest.fixture
def fake(web, monkeypatch) -> FakePool:
    host, pool = web
    monkeypatch.setattr(replica, "POLL", 0)
    monkeypatch.setattr("fpm_fleet.rollout.replica.time.sleep", lambda s: None)
    return FakePool(host, pool)


# --- the guard ---------------------------------------------------------------------------------

def test_the_guard_lets_a_replica_go_when_another_is_enabled_and_answers_ping(fake):
    assert replica.guard(fake.replica(1)).name == "www-2"
    assert "ping www-2" in fake.runner.whats


@pytest.mark.parametrize("other", ["drained", "disabled", "stopped", "no ping"])
def test_the_guard_refuses_when_no_other_replica_serves(fake, other):
    if other == "drained":
        fake.flags[2] = {"Init", "Drn", "Ok"}
    elif other == "disabled":
        fake.flags[2] = {"Init", "Dis"}
    elif other == "stopped":
        fake.flags[2] = {"Init", "Stop"}
    else:
        fake.pinned[2] = None  # in rotation, but its master is gone: no pong
    with pytest.raises(RolloutError, match=r"^web1: refusing to take www-1 out: no other "
                                           r"replica of pool www is enabled and healthy"):
        replica.guard(fake.replica(1))


def test_the_guard_counts_an_err_member_only_once_its_retry_has_passed(fake, clock):
    fake.flags[2] = {"Init", "Err"}
    assert replica.guard(fake.replica(1)).name == "www-2"
    assert clock.slept == [fake.pool.retry + 0.5]
    assert fake.runner.whats.count(f"read balancer-manager {fake.at.manager_url}") == 2


def test_the_guard_refuses_an_err_member_taken_out_while_it_waited(fake, clock):
    fake.flags[2] = {"Init", "Err"}

    def operator_drains_it() -> None:
        fake.flags[2] = {"Init", "Drn", "Err"}

    clock.then = operator_drains_it
    with pytest.raises(RolloutError, match="no other replica of pool www"):
        replica.guard(fake.replica(1))
    # the Err wait, then the re-reads before a refusal
    assert clock.slept == [fake.pool.retry + 0.5] + [replica.GUARD_WAIT] * 4


def test_the_guard_reads_again_before_refusing_and_goes_ahead_once_the_other_is_in(
        fake, clock):
    # just enabled, the other replica still reads out once (seen on nginx after a reload)
    fake.flags[2] = {"Init", "Drn", "Ok"}

    def enabled_meanwhile() -> None:
        fake.flags[2] = {"Init", "Ok"}

    clock.then = enabled_meanwhile
    assert replica.guard(fake.replica(1)).n == 2
    assert clock.slept == [replica.GUARD_WAIT]


# --- wait idle ----------------------------------------------------------------------------------

def test_a_stuck_busy_is_stale_once_fpm_was_idle_without_new_connections(fake, clock,
                                                                          monkeypatch):
    monkeypatch.setattr(replica, "POLL", 0.25)
    fake.busy[1] = 3  # Apache's Busy stays above 0 although nothing is in flight
    waited, note = replica.wait_idle(fake.replica(1), timeout=30)
    assert waited == pytest.approx(replica.STALE_BUSY_GRACE)
    assert note == f"Busy=3 is stale: FPM idle for {replica.STALE_BUSY_GRACE:g}s"


def test_a_busy_replica_that_keeps_accepting_connections_is_never_stale(fake, clock,
                                                                       monkeypatch):
    monkeypatch.setattr(replica, "POLL", 0.25)
    fake.busy[1] = 3
    accepted = iter(range(100, 10_000))
    answer = fake.fpm_answer

    def accepting(n: int) -> tuple[str, int]:
        fake.fpm[n] = {"accepted": next(accepted)}
        return answer(n)

    fake.fpm_answer = accepting  # type: ignore[method-assign]
    with pytest.raises(RolloutError, match=r"^web1: www-1 still busy after 3s \(Busy=3, "
                                           r"active=0, connections=0\)"):
        replica.wait_idle(fake.replica(1), timeout=3)


def test_idle_needs_busy_zero_and_fpm_quiet_twice_in_a_row(fake, clock, monkeypatch):
    monkeypatch.setattr(replica, "POLL", 0.25)
    r = fake.replica(1)
    apache.drain(r)
    waited, note = replica.wait_idle(r, timeout=30)
    assert (waited, note) == (0.25, "")
    assert fake.runner.whats.count("idle probe www-1") == 2


def test_a_replica_whose_drain_flag_was_lost_is_drained_again(fake, clock):
    r = fake.replica(1)  # in rotation: as if Apache restarted after the drain
    replica.wait_idle(r, timeout=30)
    assert fake.serving() == [2]
    assert fake.runner.whats[:3] == ["idle probe www-1",
                                     f"read balancer-manager {fake.at.manager_url}",
                                     "set fcgi://www-1 {'N': 1} in balancer-manager"]


# --- the automatic revert -----------------------------------------------------------------------

def test_a_release_failing_its_health_gate_is_reverted_and_the_host_says_so(fake):
    fake.unhealthy_releases.add("v2")
    before = PoolOutcome(fake.host.name, fake.pool.name, before="v1")
    with pytest.raises(PoolFailed) as info:
        deploy._activate_and_roll(fake.at, Plan("v2", "fab deploy", 5), before, EventLog())
    assert info.value.outcomes == (PoolOutcome("web1", "www", before="v1", after="v1",
                                               passed_point_of_no_return=True, reverted=True),)
    assert info.value.exit_code == RolloutError.exit_code
    assert str(info.value) == (
        "web1: www-1 failed its health gate on v2: health check answered 500 (want 200) (left "
        "out of rotation); reverted: web1 is back on v1 and in rotation (2 of 2 www replicas "
        "serving); v2 is marked bad")
    assert (fake.current, fake.pinned, fake.serving()) == ("v1", {1: "v1", 2: "v1"}, [1, 2])
    whats = fake.runner.whats
    assert whats.index("activate v2") < whats.index("activate v1") < whats.index("mark v2 bad")
    assert "start www-2 pinned to v2" not in whats, "the rollout stopped at the failed replica"


def test_a_failure_on_the_release_that_was_already_current_is_not_reverted(fake):
    fake.unhealthy_releases.add("v1")
    fake.pinned[1] = None  # a replica to start on the current release: its gate fails
    before = PoolOutcome(fake.host.name, fake.pool.name, before="v1")
    with pytest.raises(PoolFailed) as info:
        deploy._activate_and_roll(fake.at, Plan("v1", "fab deploy", 5), before, EventLog())
    (outcome,) = info.value.outcomes
    assert not outcome.reverted and outcome.after == "v1"
    assert not any(w.startswith(("activate", "mark")) for w in fake.runner.whats)


# --- recovery after an interrupt ----------------------------------------------------------------

def test_an_interrupt_puts_a_drained_healthy_replica_back(fake):
    obs = EventLog()
    r = fake.replica(1)
    with pytest.raises(KeyboardInterrupt), rollout.tracked(r, obs):
        apache.drain(r)
        assert fake.serving() == [2]
        raise KeyboardInterrupt
    assert fake.serving() == [1, 2]
    assert [(e.kind, e.step, e.target, e.detail) for e in obs.events] == [
        ("warn", "interrupted", "www-1", "running v1, Init Ok")]


def test_an_interrupt_between_stop_and_start_starts_the_replica_again(fake):
    # the replica in hand was meant to run: left stopped, the pool would be a replica short
    obs = EventLog()
    r = fake.replica(1)
    with pytest.raises(KeyboardInterrupt), rollout.tracked(r, obs):
        apache.drain(r)
        r.ask(fpm.stop(r))
        raise KeyboardInterrupt
    assert fake.serving() == [1, 2] and fake.pinned[1] == "v1"
    assert [e.detail for e in obs.events] == ["running v1, Init Ok"]


def test_an_interrupted_replica_that_cannot_start_stays_out_and_says_so(fake):
    obs = EventLog()
    r = fake.replica(1)
    with pytest.raises(KeyboardInterrupt), rollout.tracked(r, obs):
        apache.drain(r)
        r.ask(fpm.stop(r))
        fake.current = None  # nothing to start it on
        raise KeyboardInterrupt
    assert fake.serving() == [2]
    assert [e.detail for e in obs.events] == ["stopped, out of rotation"]


def test_an_interrupted_parallel_run_still_puts_the_replica_back(fake):
    # the runner refuses new commands once interrupted; the recovery's commands are shielded
    interrupt = threading.Event()
    r = HostPool(Interruptible(fake.runner, interrupt), fake.host, fake.pool).replica(1)
    obs = EventLog()
    with pytest.raises(Interrupted, match="interrupted before idle probe www-1"), \
            rollout.tracked(r, obs):
        apache.drain(r)
        interrupt.set()
        replica.wait_idle(r, 5)
    assert fake.serving() == [1, 2]
    assert [e.step for e in obs.events] == ["interrupted"]


# --- the dry run of a restart -------------------------------------------------------------------

@pytest.fixture
def sudo_fake(inventory_data, build_fleet, monkeypatch) -> FakePool:
    """A pool on a host the inventory reaches as a deploy user (root commands via sudo)."""
    monkeypatch.setattr(replica, "POLL", 0)
    inventory_data["defaults"].update(user="deploy", setup_user="root")
    fleet = build_fleet(inventory_data)
    assert fleet.hosts[0].sudo
    return FakePool(fleet.hosts[0], fleet.pools[0])


def dry_restart(fake: FakePool) -> Recorder:
    recorder = Recorder(fake.host, fake.runner)
    replica.restart(HostPool(recorder, fake.host, fake.pool).replica(1), "v2", EventLog(), 5)
    return recorder


def test_a_dry_run_restart_records_its_changes_and_assumes_its_checks(sudo_fake):
    url = sudo_fake.at.manager_url
    plan = dry_restart(sudo_fake).plan
    kinds = {kind: [p.what for p in plan if p.kind == kind]
             for kind in ("change", "check", "read")}
    assert kinds["change"] == ["set fcgi://www-1 {'N': 1} in balancer-manager",
                               "stop www-1", "start www-1 pinned to v2",
                               "set fcgi://www-1 {'D': 0, 'N': 0, 'S': 0, 'H': 0} in "
                               "balancer-manager"]
    assert kinds["check"] == ["idle probe www-1", "idle probe www-1",
                              f"read balancer-manager {url}",  # still out before the stop
                              "gate www-1"]
    assert kinds["read"] == [f"read balancer-manager {url}", "ping www-2",  # the guard
                             f"read balancer-manager {url}",  # drain
                             f"read balancer-manager {url}"]  # enable
    assert {p.host for p in plan} == {"web1"} and {p.user for p in plan} == {"deploy"}
    # nothing changed: the host only answered the reads
    assert [w for w in sudo_fake.runner.whats if w.startswith(("set", "stop", "start"))] == []
    assert (sudo_fake.serving(), sudo_fake.pinned) == ([1, 2], {1: "v1", 2: "v1"})


def test_a_dry_run_shows_the_root_commands_with_sudo_as_the_login_user_runs_them(sudo_fake):
    plan = dry_restart(sudo_fake).plan
    root = [p for p in plan if p.what in ("stop www-1", "start www-1 pinned to v2")]
    assert len(root) == 2 and all("sudo -n" in p.command for p in root)
    assert "sudo -n -- systemctl stop fpm-fleet-www@1.service" in root[0].command
    assert root[0].command == fpm.stop(sudo_fake.replica(1)).text
    assert "sudo" not in " ".join(p.command for p in plan if p not in root)
    assert root[1].command == fpm.start(sudo_fake.replica(1), "v2").text
    assert "sudo -n -- systemctl start fpm-fleet-www@1.service" in root[1].command


def test_a_dry_run_as_root_runs_the_same_commands_without_sudo(fake):
    plan = dry_restart(fake).plan
    assert [p.what for p in plan if p.kind == "change"][1:3] == ["stop www-1",
                                                                "start www-1 pinned to v2"]
    assert not any("sudo" in p.command for p in plan)
