"""Unexpected answers inside a host's rollout: garbage where balancer-manager's XML or FPM's
JSON is expected, a missing section. Each becomes that host's failure with a message (never
a traceback) and the replica in hand is put back in rotation (never left drained).

FakeHost plays one host: balancer-manager's members, the replicas' masters and their FastCGI
answers, keyed by what each command is for; `garbage` replaces the next answers to a kind of
command by text no parser expects.
"""

from __future__ import annotations

import _thread
import ast
import json
import re
import threading
import time

import pytest

from fpm_fleet.errors import RemoteResult
from fpm_fleet.events import Recorder
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote import shell
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout.hosts import Runner

NS = "http://httpd.apache.org"
TOKENS = {"D": "Dis", "N": "Drn", "S": "Stop"}
GARBAGE = "<html><body>502 Proxy Error [/x] [red]</body>"
IDLE = json.dumps({"active processes": 0, "idle processes": 2, "total processes": 2,
                   "accepted conn": 5, "listen queue": 0})


class FakeHost:
    def __init__(self, host, pool) -> None:
        self.host, self.pool = host, pool
        self.layout = Layout.of(host, pool)
        self.flags = {n: {"Init", "Ok"} for n in pool.replica_numbers}
        self.running = {n: True for n in pool.replica_numbers}
        self.garbage: dict[str, int] = {}
        self.whats: list[str] = []

    # --- answers ---
    def page(self) -> str:
        workers = "".join(
            f"<httpd:worker><httpd:name>unix:{self.layout.sock(n)}|{self.pool.member(n)}"
            f"</httpd:name><httpd:status>{' '.join(sorted(f))}</httpd:status>"
            f"<httpd:busy>0</httpd:busy></httpd:worker>" for n, f in self.flags.items())
        return (f"<httpd:manager xmlns:httpd='{NS}'><httpd:balancers><httpd:balancer>"
                f"<httpd:name>balancer://{self.pool.balancer}</httpd:name>"
                f"<httpd:workers>{workers}</httpd:workers><httpd:nonce>n</httpd:nonce>"
                "</httpd:balancer></httpd:balancers></httpd:manager>")

    def probe(self) -> str:
        lines = []
        for n, up in self.running.items():
            title = shell.FPM_MASTER_TITLE.format(conf=self.layout.fpm_conf(n))
            lines.append("\t".join([str(n), str(100 + n), "S", "9", title,
                                    str(self.layout.release("v1")), "active", "0"])
                         if up else f"{n}\t-\t-\t-\t-\t-\tinactive\t0")
        return "\n".join(lines) + "\n"

    def idle_probe(self, n: int) -> str:
        bm = self.answer("idle bm", self.page())
        status = self.answer("idle fpm", IDLE)
        return (f"\n{shell.SECTION} bm\n{bm}\n{shell.SECTION} fpm\nStatus: 200\r\n"
                f"Content-type: application/json\r\n\r\n{status}\n{shell.SECTION} conns\n0\n")

    def answer(self, kind: str, good: str) -> str:
        if self.garbage.get(kind, 0) > 0:
            self.garbage[kind] -= 1
            return GARBAGE
        return good

    def set_flags(self, what: str) -> None:
        n = int(re.search(r"-(\d+) ", what)[1])
        flags = ast.literal_eval(what[what.index("{"):what.index("}") + 1])
        for flag, value in flags.items():
            (self.flags[n].add if value else self.flags[n].discard)(TOKENS[flag])

    # --- the Executor protocol ---
    def run(self, command, what, *, check=True, timeout=None) -> RemoteResult:
        self.whats.append(what)
        found = re.search(rf"{self.pool.name}-(\d+)", what)
        n = int(found[1]) if found else 0
        out = ""
        if what.startswith("read balancer-manager"):
            out = self.answer("read bm", self.page())
        elif what.startswith("set "):
            self.set_flags(what)
            out = self.answer("read bm", self.page())
        elif what.startswith("probe"):
            out = self.probe()
        elif what.startswith(("ping", "health")):
            out = "Status: 200\r\n\r\npong" if self.running[n] else ""
        elif what.startswith("idle probe"):
            out = self.idle_probe(n)
        elif what.startswith("stop"):
            self.running[n], out = False, "stopped"
        elif what.startswith("start"):
            self.running[n] = True
        elif what.startswith("read") and "current.release" in what:
            out = "releases/v1\n"
        return RemoteResult(command, 0, out, "")

    def stream(self, command, what, source, *, timeout=None):
        raise AssertionError("not used")

    def serving(self) -> list[int]:
        return [n for n, f in self.flags.items() if not f & {"Dis", "Drn", "Stop"}]


@pytest.fixture
def fake(web, monkeypatch):
    host, pool = web
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    monkeypatch.setattr("fpm_fleet.rollout.replica.time.sleep", lambda s: None)
    return FakeHost(host, pool)


def restart(fake: FakeHost) -> tuple[rollout.HostResult, Recorder]:
    obs = Recorder()
    sel = rollout.Selection((fake.host,), (fake.pool,))
    results = Runner(obs, connector=lambda h: fake).run(
        (fake.host,), lambda ex, h, r: rollout.restart_host(ex, h, sel, obs, 5, r))
    return results[0], obs


def test_the_fake_host_restarts_cleanly(fake):
    result, _ = restart(fake)
    assert result.ok and result.done == 2 and fake.serving() == [1, 2]


@pytest.mark.parametrize("kind", ["idle bm", "idle fpm"])
def test_garbage_in_the_idle_probe_fails_the_host_and_puts_the_replica_back(fake, kind):
    fake.garbage[kind] = 1
    result, _ = restart(fake)
    assert not result.ok and result.exit_code == 5
    assert result.error.startswith(f"{fake.host.name}: ")
    assert "did not answer XML" in result.error or "unexpected FPM status" in result.error
    assert fake.serving() == [1, 2], "the drained replica was put back"
    assert result.failed == 1


def test_a_missing_section_in_the_idle_probe_fails_the_host_and_puts_the_replica_back(fake):
    fake.idle_probe = lambda n: f"\n{shell.SECTION} conns\n0\n"  # bm and fpm missing
    result, _ = restart(fake)
    assert not result.ok and "did not answer XML" in result.error
    assert fake.serving() == [1, 2]


def test_garbage_read_back_after_a_drain_fails_the_host_and_puts_the_replica_back(fake):
    real_set = fake.set_flags

    def set_then_garbage(what: str) -> None:
        real_set(what)
        if "'N': 1" in what:
            fake.garbage["read bm"] = 1  # the page read back after the drain POST

    fake.set_flags = set_then_garbage
    result, obs = restart(fake)
    assert not result.ok and "did not answer XML" in result.error
    assert fake.serving() == [1, 2]
    assert any(e.step == "recover" for e in obs.events)


def test_a_non_json_fpm_status_is_the_hosts_failure_not_a_value_error(fake):
    def garbage_status(command, what, **kw):
        return RemoteResult(command, 0, "Status: 200\r\n\r\nnot json", "")

    fake.run = garbage_status
    with pytest.raises(rollout.RolloutError, match="unexpected FPM status answer"):
        fpm.status(fake, fake.host, fake.pool, 1)


def test_any_unexpected_exception_is_the_hosts_failure_with_a_message(fake):
    def bug(ex, h, r):
        raise KeyError("members")

    result = Runner(Recorder(), connector=lambda h: fake).run((fake.host,), bug)[0]
    assert not result.ok and result.exit_code == 5
    assert result.error == (f"{fake.host.name}: unexpected error: KeyError: 'members' "
                            "(details in the log)")


def test_an_unexpected_exception_mid_replica_puts_the_replica_back(fake, monkeypatch):
    def broken_wait(ex, r, timeout):
        raise IndexError("list index out of range")

    monkeypatch.setattr("fpm_fleet.rollout.replica.wait_idle", broken_wait)
    result, _ = restart(fake)
    assert not result.ok and "unexpected error: IndexError" in result.error
    assert fake.serving() == [1, 2]


# --- an interrupted parallel run (issue 9, item 12) -----------------------------------------

class SlowHost(FakeHost):
    """A FakeHost whose every command takes a little time, as over SSH."""

    def run(self, command, what, *, check=True, timeout=None) -> RemoteResult:
        time.sleep(0.03)
        return super().run(command, what, check=check, timeout=timeout)


def test_an_interrupt_stops_every_host_of_a_parallel_run_at_its_next_step(web, monkeypatch,
                                                                          inventory_data,
                                                                          build_fleet):
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    inventory_data["hosts"].append({"name": "web3", "address": "198.18.0.13"})
    fleet = build_fleet(inventory_data)
    fakes = {h.name: SlowHost(h, fleet.pools[0]) for h in fleet.hosts}
    sel = rollout.Selection(fleet.hosts, fleet.pools)
    obs = Recorder()
    runner = Runner(obs, parallel=3, connector=lambda h: fakes[h.name])
    started: list[str] = []

    def work(ex, h, r):
        started.append(h.name)
        rollout.restart_host(ex, h, sel, obs, 5, r)

    signalled: list[float] = []

    def ctrl_c() -> None:  # as Python delivers it: to the main thread only
        signalled.append(time.monotonic())
        _thread.interrupt_main()

    threading.Timer(0.4, ctrl_c).start()
    with pytest.raises(KeyboardInterrupt):
        runner.run(fleet.hosts, work)
    assert sorted(started) == ["web1", "web2", "web3"]
    for fake in fakes.values():
        assert fake.serving() == [1, 2], f"{fake.host.name}: a replica was left out"
    stopped = [e for e in obs.events if e.step == "interrupted"]
    assert {e.host for e in stopped} == {"web1", "web2", "web3"}, obs.events
    assert not any(e.kind == "done" and e.step == "enable" and e.target.endswith("-2")
                   for e in obs.events), "no host went on to its last replica"
    assert time.monotonic() - signalled[0] < 1, "every host stopped and recovered at once"
