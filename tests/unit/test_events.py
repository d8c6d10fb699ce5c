"""fpm_fleet.core.events: steps announce start and end (with duration) to an observer."""

from __future__ import annotations

import pytest
from fakes import EventLog

from fpm_fleet.core.events import Event, step


def test_a_step_reports_start_then_done_with_its_detail_and_duration():
    rec = EventLog()
    with step(rec, "web1", "drain", "www-1") as s:
        s.detail = "busy 0"
    start, done = rec.events
    assert (start.kind, start.host, start.step, start.target) == ("start", "web1", "drain", "www-1")
    assert (done.kind, done.detail) == ("done", "busy 0")
    assert done.elapsed >= 0
    assert rec.steps() == [("web1", "www-1", "drain")]


def test_a_failing_step_reports_fail_with_the_reason_and_reraises():
    rec = EventLog()
    with pytest.raises(RuntimeError, match="socket gone"), step(rec, "web1", "ping", "www-2"):
        raise RuntimeError("socket gone")
    assert [e.kind for e in rec.events] == ["start", "fail"]
    assert rec.events[1].detail == "socket gone"
    assert rec.steps("fail") == [("web1", "www-2", "ping")]
    assert rec.steps() == []


def test_an_interrupted_step_is_reported_with_the_exception_name():
    rec = EventLog()
    with pytest.raises(KeyboardInterrupt), step(rec, "web1", "wait idle"):
        raise KeyboardInterrupt
    assert rec.events[-1] == Event("fail", "web1", "wait idle", "", "KeyboardInterrupt",
                                   rec.events[-1].elapsed)



