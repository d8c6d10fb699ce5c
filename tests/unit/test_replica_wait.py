"""replica.wait_idle: when a replica counts as idle, and what it does when Apache forgets
the drain flag (no SSH: the probes are scripted)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest
from fakes import FakeRunner, replica_of

from fpm_fleet.core.errors import RolloutError
from fpm_fleet.host import fpm
from fpm_fleet.remote.command import Command
from fpm_fleet.rollout import replica

IDLE = fpm.FpmStatus(active=0, idle=8, total=8, accepted=100, listen_queue=0)
BUSY = fpm.FpmStatus(active=1, idle=7, total=8, accepted=100, listen_queue=0)


@pytest.fixture
def scripted(monkeypatch, web):
    """Feed wait_idle a list of activities (each idle probe, asked through the runner, reads
    the next one); record the drains it asks for."""
    host, pool = web
    drains: list[int] = []
    runner = FakeRunner(host, default=None).on("idle probe www-1", "")

    def run(activities: Iterable[replica.Activity], timeout: float = 5) -> tuple[float, str]:
        feed = iter(activities)
        monkeypatch.setattr(replica, "activity", lambda r: Command(
            "idle-probe", f"idle probe {r.name}", lambda res: next(feed), check=False))
        monkeypatch.setattr(replica.server, "drain", lambda r: drains.append(r.n))
        monkeypatch.setattr(replica, "POLL", 0)
        return replica.wait_idle(replica_of(runner, pool, 1), timeout)

    return run, drains


def test_idle_twice_in_a_row_ends_the_wait(scripted):
    run, drains = scripted
    _, note = run([replica.Activity(1, BUSY, 1), replica.Activity(0, IDLE, 0),
                        replica.Activity(0, IDLE, 0)])
    assert note == "" and drains == []


def test_a_lost_drain_flag_is_set_again_and_the_idle_count_restarts(scripted):
    run, drains = scripted
    lost = replica.Activity(0, IDLE, 0, out=False)
    run([replica.Activity(0, IDLE, 0), lost, replica.Activity(0, IDLE, 0),
         replica.Activity(0, IDLE, 0)])
    assert drains == [1]


def test_a_drain_flag_lost_again_and_again_fails_after_the_timeout(scripted):
    run, drains = scripted
    lost = replica.Activity(0, IDLE, 0, out=False)
    with pytest.raises(RolloutError, match="keeps losing its drain flag"):
        run(itertools.repeat(lost), timeout=0.05)
    assert drains
