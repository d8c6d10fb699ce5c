"""Unexpected answers inside a host's rollout: garbage where balancer-manager's XML or FPM's
JSON is expected, a missing section. Each becomes that host's failure with a message (never
a traceback) and the replica in hand is put back in rotation (never left drained).

fakes.FakePool plays one host: balancer-manager's members, the replicas' masters and their
FastCGI answers, keyed by what each command is for; `garbage` replaces the next answers to a
kind of command by text no parser expects.
"""

from __future__ import annotations

import _thread
import threading
import time

import pytest
from fakes import EventLog, FakePool, FakeRunner, fcgi, replica_of, sections_output

from fpm_fleet.core.errors import AnswerError, RolloutError
from fpm_fleet.host import fpm
from fpm_fleet.remote.group import HostGroup, HostOutcome
from fpm_fleet.rollout import hosts as rollout


@pytest.fixture
def fake(web, monkeypatch):
    host, pool = web
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    monkeypatch.setattr("fpm_fleet.rollout.replica.time.sleep", lambda s: None)
    return FakePool(host, pool)


def restart(fake: FakePool) -> tuple[HostOutcome[list[str]], EventLog]:
    obs = EventLog()
    sel = rollout.Selection((fake.host,), (fake.pool,))
    results = HostGroup(obs, connector=lambda h: fake.runner).run(
        (fake.host,), lambda runner, h: rollout.restart_host(runner, h, sel, obs, 5))
    return results.outcomes[0], obs


def failed_replicas(obs: EventLog) -> set[str]:
    return {e.target for e in obs.events if e.kind == "fail" and e.target}


def test_the_fake_host_restarts_cleanly(fake):
    result, _ = restart(fake)
    assert result.ok and result.value == ["web1/www-1", "web1/www-2"]
    assert fake.serving() == [1, 2]


@pytest.mark.parametrize("kind", ["idle bm", "idle fpm"])
def test_garbage_in_the_idle_probe_fails_the_host_and_puts_the_replica_back(fake, kind):
    fake.garbage[kind] = 1
    result, obs = restart(fake)
    assert not result.ok and result.error is not None and result.error.exit_code == 5
    error = str(result.error)
    # an AnswerError names the host and the command it could not read
    assert error.startswith(f"{fake.host.name}: idle probe www-1: ")
    assert "did not answer XML" in error or "unexpected FPM status" in error
    assert fake.serving() == [1, 2], "the drained replica was put back"
    assert failed_replicas(obs) == {"www-1"}, "one replica failed, the next was not started"


def test_a_missing_section_in_the_idle_probe_fails_the_host_and_puts_the_replica_back(fake):
    fake.idle_probe = lambda n: sections_output([("2", "0", 0)])  # bm and fpm missing
    result, _ = restart(fake)
    assert not result.ok and "balancer-manager" in str(result.error)
    assert "did not answer" in str(result.error)
    assert fake.serving() == [1, 2]


def test_garbage_read_back_after_a_drain_fails_the_host_and_puts_the_replica_back(fake):
    def garbage_after_drain(n: int, flags: dict[str, int]) -> None:
        if flags.get("N") == 1:
            fake.garbage["read bm"] = 1  # the page read back after the drain POST

    fake.on_set.append(garbage_after_drain)
    result, obs = restart(fake)
    assert not result.ok and "did not answer XML" in str(result.error)
    assert fake.serving() == [1, 2]
    assert any(e.step == "recover" for e in obs.events)


def test_a_non_json_fpm_status_is_the_hosts_failure_not_a_value_error(web):
    host, pool = web
    runner = FakeRunner(host, ("status www-1", fcgi("not json")), default=None)
    with pytest.raises(AnswerError, match=r"^web1: status www-1: unexpected FPM status answer"):
        runner.ask(fpm.fpm_status(replica_of(runner, pool, 1)))
    assert issubclass(AnswerError, RolloutError)


def test_any_unexpected_exception_is_the_hosts_failure_with_a_message(fake):
    def bug(runner, h):
        raise KeyError("members")

    result = HostGroup(EventLog(), connector=lambda h: fake.runner).run((fake.host,), bug)
    (outcome,) = result.outcomes
    assert not outcome.ok and outcome.error is not None and outcome.error.exit_code == 5
    assert str(outcome.error) == (f"{fake.host.name}: unexpected error: KeyError: 'members' "
                                  "(details in the log)")


def test_an_unexpected_exception_mid_replica_puts_the_replica_back(fake, monkeypatch):
    def broken_wait(r, timeout):
        raise IndexError("list index out of range")

    monkeypatch.setattr("fpm_fleet.rollout.replica.wait_idle", broken_wait)
    result, _ = restart(fake)
    assert not result.ok and "unexpected error: IndexError" in str(result.error)
    assert fake.serving() == [1, 2]


# --- an interrupted parallel run (issue 9, item 12) -----------------------------------------

def test_an_interrupt_stops_every_host_of_a_parallel_run_at_its_next_step(three_slow_hosts):
    fleet, fakes, sel = three_slow_hosts
    obs = EventLog()
    group = HostGroup(obs, parallel=3, connector=lambda h: fakes[h.name].runner)
    started: list[str] = []

    def work(runner, h):
        started.append(h.name)
        return rollout.restart_host(runner, h, sel, obs, 5)

    signalled: list[float] = []

    def ctrl_c() -> None:  # as Python delivers it: to the main thread only
        signalled.append(time.monotonic())
        _thread.interrupt_main()

    threading.Timer(0.4, ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        group.run(fleet.hosts, work)
    assert sorted(started) == ["web1", "web2", "web3"]
    for fake in fakes.values():
        assert fake.serving() == [1, 2], f"{fake.host.name}: a replica was left out"
    stopped = [e for e in obs.events if e.step == "interrupted"]
    assert {e.host for e in stopped} == {"web1", "web2", "web3"}, obs.events
    assert not any(e.kind == "done" and e.step == "enable" and e.target.endswith("-2")
                   for e in obs.events), "no host went on to its last replica"
    assert time.monotonic() - signalled[0] < 1, "every host stopped and recovered at once"
