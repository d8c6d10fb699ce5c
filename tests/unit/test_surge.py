"""The surge strategy on a simulated pool: the standby set starts at once on the new
release, every new replica is gated, the old set leaves rotation only once the new one
serves, capacity never drops below `replicas`; a failed gate leaves the old set serving;
keep_previous parks the old set and a rollback to it starts nothing."""

from __future__ import annotations

import subprocess
import time

import pytest
from fakes import EventLog, FakePool

from fpm_fleet import status
from fpm_fleet.core.errors import RemoteResult, RolloutError
from fpm_fleet.host import fpm
from fpm_fleet.host.fpm import StopOutcome
from fpm_fleet.remote.command import together
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout import retire, surge
from fpm_fleet.web import balancer, server


@pytest.fixture
def surge_pool(inventory_data, build_fleet):
    def make(keep_previous: bool = False) -> FakePool:
        inventory_data["pools"]["www"] = {"replicas": 2, "keep_previous": keep_previous}
        fleet = build_fleet(inventory_data)
        fake = FakePool(fleet.hosts[0], fleet.pool("www"))
        for n in (3, 4):  # the standby set: stopped, out of rotation
            fake.pinned[n] = None
            fake.flags[n] = {"Init", "Dis", "Drn", "Ok"}
        return fake
    return make


def watch_capacity(fake: FakePool) -> list[int]:
    """How many replicas serve after each balancer change."""
    seen: list[int] = []
    fake.on_set.append(lambda n, flags: seen.append(len([
        m for m in fake.serving() if fake.pinned[m]])))
    return seen


def test_the_sets_are_chosen_by_which_one_serves(surge_pool):
    pool = surge_pool().pool
    assert pool.sets == (range(1, 3), range(3, 5))
    assert surge.pick_sets(pool, {1, 2}) == ([1, 2], [3, 4])
    assert surge.pick_sets(pool, {3, 4}) == ([3, 4], [1, 2])
    assert surge.pick_sets(pool, {2, 3, 4}) == ([3, 4], [1, 2])
    assert surge.pick_sets(pool, set()) == ([], [1, 2])


def test_a_surge_starts_the_standby_set_at_once_then_retires_the_old_one(surge_pool):
    fake = surge_pool()
    capacity = watch_capacity(fake)
    fake.current = "v2"
    proven: list[bool] = []
    log = EventLog()
    assert surge.surge_to(fake.at, "v2", log, 5, proven=lambda: proven.append(True)) == [
        "www-3", "www-4"]
    assert fake.pinned == {1: None, 2: None, 3: "v2", 4: "v2"}
    assert sorted(fake.serving()) == [3, 4]
    assert min(capacity) >= 2, capacity
    starts = [c.what for c in fake.runner.calls if c.what.startswith("start ")]
    assert starts == ["start www-3, www-4 pinned to v2"]  # one command, both at once
    steps = [(e.step, e.target) for e in log.events if e.kind == "done"]
    assert steps == [("start", "www-3,www-4"), ("health", "www-3,www-4"),
                     ("flip", "www-3,www-4"), ("retire", "www-1,www-2")]
    assert proven == [True]
    # the flip is one round trip, the new set in before the old one goes out
    flips = [c.what for c in fake.runner.calls if c.what.startswith("set ")]
    assert flips == ["set fcgi://www-3 {'D': 0, 'N': 0, 'S': 0, 'H': 0}, fcgi://www-4 "
                     "{'D': 0, 'N': 0, 'S': 0, 'H': 0}, fcgi://www-1 {'N': 1}, fcgi://www-2 "
                     "{'N': 1} in balancer-manager"]
    # the host retires the old set by itself, after the flip
    whats = [c.what for c in fake.runner.calls]
    assert whats.index("retire www-1,www-2 on the host") > whats.index(flips[0])


def test_a_new_replica_failing_its_gate_takes_the_new_set_away_and_the_old_never_left(
        surge_pool):
    fake = surge_pool()
    capacity = watch_capacity(fake)
    fake.current = "v2"
    fake.unhealthy_releases.add("v2")
    with pytest.raises(RolloutError, match="www-3 failed its health gate on v2"):
        surge.surge_to(fake.at, "v2", EventLog(), 5)
    assert fake.pinned == {1: "v1", 2: "v1", 3: None, 4: None}
    assert sorted(fake.serving()) == [1, 2]
    assert min(capacity, default=2) >= 2


def test_keep_previous_parks_the_old_set_and_a_rollback_to_it_starts_nothing(surge_pool):
    fake = surge_pool(keep_previous=True)
    fake.current = "v2"
    surge.surge_to(fake.at, "v2", EventLog(), 5)
    assert fake.pinned == {1: "v1", 2: "v1", 3: "v2", 4: "v2"}
    assert fake.flags[1] >= {"Drn", "Stby"} and sorted(fake.serving()) == [3, 4]
    # the preflight does not take a parked replica for one an interrupted run left out
    rollout.preflight(fake.at, EventLog())
    assert sorted(fake.serving()) == [3, 4]
    before = len(fake.runner.calls)
    fake.current = "v1"
    log = EventLog()
    surge.surge_to(fake.at, "v1", log, 5)
    assert sorted(fake.serving()) == [1, 2]
    assert fake.pinned == {1: "v1", 2: "v1", 3: "v2", 4: "v2"}
    assert not [c for c in fake.runner.calls[before:] if c.what.startswith(("start ", "stop "))]
    assert "parked set already runs v1" in next(e.detail for e in log.events
                                                if e.step == "start" and e.kind == "done")
    # no gate probes the host again: a parked set's pinned release is what the preflight's
    # probe read under the same lock, a started set's what the start read
    assert fake.gates and not any("FPM_FLEET_MASTERS" in g.command for g in fake.gates)


def test_a_pool_already_serving_the_release_is_left_alone_unless_restarted(surge_pool):
    fake = surge_pool()
    assert surge.surge_to(fake.at, "v1", EventLog(), 5) == []
    assert surge.surge_to(fake.at, "v1", EventLog(), 5, force=True) == ["www-3", "www-4"]
    assert sorted(fake.serving()) == [3, 4]


def test_the_start_and_stop_of_a_set_are_read_per_replica():
    started = fpm.parse_started("3 ok /srv/fpm-fleet/www/releases/v2\n4 failed\n", [3, 4])
    assert started == {3: fpm.Started(True, "v2"), 4: fpm.Started(False)}
    assert fpm.parse_started("3 ok -\n", [3, 4]) == {3: fpm.Started(True, None),
                                                     4: fpm.Started(False)}
    assert fpm.parse_started("3 ok /srv/a\\040b/releases/v\\0401//deleted\n", [3]) == {
        3: fpm.Started(True, "v 1")}
    stopped = fpm.parse_stopped_set("1 strays 2\n1 stopped\n2 not-running\n", [1, 2])
    assert stopped[1].outcome is StopOutcome.STOPPED and stopped[1].strays
    assert stopped[2].outcome is StopOutcome.NOT_RUNNING
    with pytest.raises(ValueError):
        fpm.parse_stopped_set("1 stopped\n", [1, 2])


def test_the_first_rollout_of_a_fresh_host_starts_the_first_set_and_quiets_the_other(
        surge_pool):
    # Apache enables a member it has never seen: every slot reads "Init Ok", none runs
    fake = surge_pool()
    for n in fake.pool.replica_numbers:
        fake.pinned[n], fake.flags[n] = None, {"Init", "Ok"}
    surge.surge_to(fake.at, "v1", EventLog(), 5)
    assert fake.pinned == {1: "v1", 2: "v1", 3: None, 4: None}
    assert sorted(fake.serving()) == [1, 2]
    assert fake.flags[3] >= {"Dis", "Drn"} and fake.flags[4] >= {"Dis", "Drn"}


def test_standby_replicas_found_in_rotation_are_drained_and_waited_on_before_their_stop(
        surge_pool):
    # both sets run and serve (started by hand): the standby set's requests in flight must
    # finish before it is stopped for the new release
    fake = surge_pool()
    for n in (3, 4):
        fake.pinned[n], fake.flags[n] = "v1", {"Init", "Ok"}
    fake.current = "v2"
    surge.surge_to(fake.at, "v2", EventLog(), 5)
    whats = [c.what for c in fake.runner.calls]
    stop = whats.index("stop www-3, www-4")
    assert whats.index("set fcgi://www-3 {'N': 1}, fcgi://www-4 {'N': 1} in balancer-manager") \
        < stop
    assert whats.index("wait until www-3, www-4 are unused") < stop
    assert fake.pinned == {1: None, 2: None, 3: "v2", 4: "v2"}


def test_standby_replicas_still_in_use_are_never_stopped(surge_pool):
    fake = surge_pool()
    for n in (3, 4):
        fake.pinned[n], fake.flags[n] = "v1", {"Init", "Ok"}
    fake.connections[4] = 1  # a request that never ends
    fake.current = "v2"
    with pytest.raises(RolloutError, match="www-4 still in use after 5s out of rotation"):
        surge.surge_to(fake.at, "v2", EventLog(), 5)
    assert not any(c.what.startswith("stop www-3") for c in fake.runner.calls)
    assert fake.pinned[3] == fake.pinned[4] == "v1"


def test_the_old_set_is_left_to_the_host_which_waits_for_its_sockets_then_stops_it(surge_pool):
    fake = surge_pool()
    at = fake.at
    old, new = at.replicas([1, 2]), at.replicas([3, 4])
    bal = balancer.pick(fake.pool, fake.page())
    script = retire.job_script(at, old, new, bal)
    # the new set enabled at boot; each old socket waited on, bounded by stop_timeout
    assert script.index("systemctl enable --no-reload --quiet fpm-fleet-www@3.service") \
        < script.index(f"wait_unused {at.layout.sock(1)} {fake.pool.stop_timeout * 10}") \
        < script.index("systemctl stop fpm-fleet-www@1.service") \
        < script.index("w_status_D=1")
    command = retire.retire(at, old, new, bal)
    # the lock is taken before the command returns, and handed to the detached job
    assert command.changes and command.text.index("flock -w") < command.text.index("setsid -f")
    assert "retire.lock" in command.text and command.what == "retire www-1,www-2 on the host"


def test_waiting_for_a_retirement_reads_the_seconds_and_names_a_job_that_outlasts_it(
        surge_pool):
    at = surge_pool().at
    wait = retire.wait_retired(at)
    assert wait.read(RemoteResult(wait.text, 0, "1500\n", "")) == 1.5
    with pytest.raises(RolloutError, match=r"still retiring after .*retire\.log"):
        wait.read(RemoteResult(wait.text, 75, "", ""))


def test_a_preflight_leaves_out_an_old_set_whose_retirement_was_cut_short(surge_pool):
    # a reboot killed the job: the old set runs v1 drained, the new one serves v2
    fake = surge_pool()
    for n in (3, 4):
        fake.pinned[n], fake.flags[n] = "v2", {"Init", "Ok"}
    for n in (1, 2):
        fake.flags[n] = {"Init", "Drn", "Ok"}
    fake.current = "v2"
    assert rollout.preflight(fake.at, EventLog()).healed == []
    assert sorted(fake.serving()) == [3, 4]


def test_status_tells_a_retiring_set_from_a_parked_one(surge_pool):
    fake = surge_pool(keep_previous=True)
    for n in (3, 4):
        fake.pinned[n], fake.flags[n] = "v2", {"Init", "Ok"}
    fake.flags[1] = {"Init", "Drn", "Ok"}  # drained by a flip, until the host stops it
    fake.flags[2] = {"Init", "Drn", "Stby", "Ok"}  # parked by keep_previous
    fake.current = "v2"
    rows = {row.replica: row for row in status.pool_status(fake.at, [1, 2, 3, 4])}
    assert [rows[n].role for n in (1, 2, 3, 4)] == ["retiring", "parked", "serving", "serving"]


def test_the_wait_for_a_retirement_waits_on_the_job_s_lock_for_real(
        inventory_data, build_fleet, tmp_path):
    inventory_data["defaults"]["root"] = str(tmp_path)
    inventory_data["pools"]["www"] = {"replicas": 2}
    fleet = build_fleet(inventory_data)
    at = FakePool(fleet.hosts[0], fleet.pool("www")).at
    wait = retire.wait_retired(at)
    state = tmp_path / "www" / "state"
    state.mkdir(parents=True)

    def run(command: str) -> RemoteResult:
        done = subprocess.run(["sh", "-c", command], capture_output=True, text=True,
                              timeout=30, check=False)
        return RemoteResult(command, done.returncode, done.stdout, done.stderr)

    assert wait.read(run(wait.text)) == 0  # no job ever ran
    # a job holds the lock for 0.5 s; the wait, sharing a round trip with another read, ends
    # once the job does
    holder = subprocess.Popen(["flock", str(state / "retire.lock"), "sleep", "0.5"])
    time.sleep(0.1)
    both = together("wait and read", [wait, fpm.current_release(at)])
    waited, _ = both.read(run(both.text))
    holder.wait()
    assert 0.2 <= waited < 5


def test_a_flip_the_balancer_refuses_brings_the_old_set_back_and_takes_the_new_one_away(
        surge_pool):
    fake = surge_pool()
    fake.current = "v2"
    # the flip's round trip fails (balancer-manager refuses the POSTs); the old set's
    # re-enable and the new set's removal, round trips of their own, go through
    fake.runner.first(lambda call: "fcgi://www-1 {'N': 1}" in call.what,
                      (22, "curl: (22) The requested URL returned error: 403"))
    with pytest.raises(RolloutError, match="refused the change"):
        surge.surge_to(fake.at, "v2", EventLog(), 5)
    assert sorted(fake.serving()) == [1, 2]
    assert fake.pinned == {1: "v1", 2: "v1", 3: None, 4: None}


def test_a_parked_replica_that_stopped_answering_fails_the_gate_of_a_rollback(surge_pool):
    fake = surge_pool(keep_previous=True)
    fake.current = "v2"
    surge.surge_to(fake.at, "v2", EventLog(), 5)
    fake.current = "v1"
    seen = fake.at.ask(together("read www balancer and replicas",
                                [server.read_command(fake.at), fpm.probe(fake.at)]))
    fake.pinned[1] = None  # its master died after the preflight read it: no socket answers
    with pytest.raises(RolloutError, match="www-1 failed its health gate on v1"):
        surge.surge_to(fake.at, "v1", EventLog(), 5, seen=seen)
    assert sorted(fake.serving()) == [3, 4], "the set serving v2 never left rotation"


def test_a_start_that_cannot_confirm_the_pinned_release_fails_the_gate(surge_pool):
    fake = surge_pool()
    fake.current = "v2"
    fake.start_reads_pin = False  # the masters run and answer, but no pin was read
    with pytest.raises(RolloutError, match="pinned release is none"):
        surge.surge_to(fake.at, "v2", EventLog(), 5)
    assert sorted(fake.serving()) == [1, 2], "the serving set never left rotation"
