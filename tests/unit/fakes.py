"""The unit tests' fakes, shared by every test module.

- FakeRunner: the Runner protocol with scripted answers. Rules pair a matcher (the start
  of a command's `what`, a predicate such as `command_has("--data")`, or a regex searched
  in `what`) with answers; the first rule that matches answers, each of its answers once in
  order and then the last one again. Every command is recorded (text and what).
- FakePool: one pool on one host simulated over a FakeRunner, for the step logic:
  balancer-manager's members and their flags, each replica's master (running, pinned
  release), FPM status, open connections, the current release.
- EventLog: an observer that keeps every event.

The local `sh -c` runner, which runs commands for real in tmp_path, is conftest.LocalRunner.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from fpm_fleet.core.errors import RemoteError, RemoteResult
from fpm_fleet.core.events import Event
from fpm_fleet.core.inventory import Host, Pool
from fpm_fleet.core.selection import Selection
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.releases import manifest
from fpm_fleet.remote import shell
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.dryrun import Planned, Recorder
from fpm_fleet.remote.runner import ask_by_running
from fpm_fleet.rollout import deploy
from fpm_fleet.rollout.deploy import Plan

T = TypeVar("T")


# --- the scripted runner -------------------------------------------------------------------------

@dataclass(frozen=True)
class Call:
    """One command a FakeRunner was asked to run."""

    command: str
    what: str
    timeout: float | None = None
    stdin: bytes | None = None


# An answer: stdout (exit 0), (exit, stdout) or (exit, stdout, stderr), a RemoteResult, an
# exception to raise, or a function of the Call that returns one of those.
Answer = (str | tuple[int, str] | tuple[int, str, str] | RemoteResult | BaseException
          | Callable[[Call], Any])
Matcher = str | re.Pattern[str] | Callable[[Call], bool]


def command_has(text: str) -> Callable[[Call], bool]:
    """Matches a command whose text contains `text`."""
    return lambda call: text in call.command


def ANY(call: Call) -> bool:
    """Matches every command."""
    return True


def _matches(matcher: Matcher, call: Call) -> bool:
    if isinstance(matcher, str):
        return call.what.startswith(matcher)
    if isinstance(matcher, re.Pattern):
        return matcher.search(call.what) is not None
    return matcher(call)


@dataclass
class _Rule:
    matcher: Matcher
    answers: list[Answer]


class FakeRunner:
    """A Runner whose answers are scripted; see the module docstring.

    `rules` are (matcher, answer) or (matcher, [answers]); `on` and `first` add more. A
    command no rule matches answers `default` (exit 0, empty output), or fails the test
    when `default` is None. Like a real runner, `run(check=True)` raises RemoteError for a
    non-zero exit, and `ask` reads the answer through the library's ask_by_running. `delay`
    seconds pass before each answer (as over SSH)."""

    def __init__(self, host: Host, *rules: tuple[Matcher, Answer | list[Answer]],
                 default: Answer | None = "", delay: float = 0.0) -> None:
        self.host = host
        self.rules: list[_Rule] = []
        self.default = default
        self.delay = delay
        self.calls: list[Call] = []
        for matcher, answers in rules:
            self.on(matcher, *(answers if isinstance(answers, list) else [answers]))

    def on(self, matcher: Matcher, *answers: Answer) -> FakeRunner:
        """Add a rule (after those already there); returns the runner."""
        if not answers:
            raise ValueError("a rule needs at least one answer")
        self.rules.append(_Rule(matcher, list(answers)))
        return self

    def first(self, matcher: Matcher, *answers: Answer) -> FakeRunner:
        """Add a rule that takes precedence over those already there."""
        self.on(matcher, *answers)
        self.rules.insert(0, self.rules.pop())
        return self

    @property
    def commands(self) -> list[str]:
        return [c.command for c in self.calls]

    @property
    def whats(self) -> list[str]:
        return [c.what for c in self.calls]

    def _answer(self, call: Call) -> RemoteResult:
        self.calls.append(call)
        if self.delay:
            time.sleep(self.delay)
        for rule in self.rules:
            if _matches(rule.matcher, call):
                answer = rule.answers.pop(0) if len(rule.answers) > 1 else rule.answers[0]
                return _result(call, answer)
        if self.default is None:
            raise AssertionError(f"unscripted command [{call.what}]: {call.command}")
        return _result(call, self.default)

    # --- the Runner protocol ---
    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        result = self._answer(Call(command, what, timeout))
        if check and not result.ok:
            raise RemoteError(self.host.name, what, result)
        return result

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]:
        data = source.read()
        result = self._answer(Call(command, what, timeout, data))
        if not result.ok:
            raise RemoteError(self.host.name, what, result)
        return result, len(data)

    def ask(self, cmd: Command[T]) -> T:
        return ask_by_running(self, cmd)


def _result(call: Call, answer: Answer) -> RemoteResult:
    if callable(answer) and not isinstance(answer, BaseException):
        return _result(call, answer(call))
    if isinstance(answer, BaseException):
        raise answer
    if isinstance(answer, RemoteResult):
        return dataclasses.replace(answer, command=call.command)
    if isinstance(answer, tuple):
        code, out, *err = answer
        return RemoteResult(call.command, code, out, err[0] if err else "")
    return RemoteResult(call.command, 0, answer, "")


def scripted(host: Host, *answers: Answer) -> FakeRunner:
    """A runner answering its commands, whatever they are, with `answers` in order (the last
    one repeats)."""
    return FakeRunner(host, (ANY, list(answers)), default=None)


def replica_of(runner: Any, pool: Pool, n: int) -> Replica:
    """Replica n of `pool` on the runner's host."""
    return HostPool(runner, runner.host, pool).replica(n)


# --- answers as the hosts print them -------------------------------------------------------------

NS = "http://httpd.apache.org"


def manager_page(pool: Pool, layout: Layout, flags: dict[int, set[str]] | dict[int, str],
                 busy: dict[int, int] | None = None, nonce: str = "n") -> str:
    """balancer-manager's ?xml=1 answer: pool's balancer with one member per replica."""
    workers = "".join(
        f"<httpd:worker><httpd:name>unix:{layout.sock(n)}|{pool.member(n)}</httpd:name>"
        f"<httpd:status>{f if isinstance(f, str) else ' '.join(sorted(f))}</httpd:status>"
        f"<httpd:busy>{(busy or {}).get(n, 0)}</httpd:busy></httpd:worker>"
        for n, f in flags.items())
    return (f"<httpd:manager xmlns:httpd='{NS}'><httpd:balancers><httpd:balancer>"
            f"<httpd:name>balancer://{pool.balancer}</httpd:name>"
            f"<httpd:workers>{workers}</httpd:workers><httpd:nonce>{nonce}</httpd:nonce>"
            "</httpd:balancer></httpd:balancers></httpd:manager>")


def fcgi(body: str, status: int = 200, content_type: str = "text/plain") -> str:
    """cgi-fcgi's output for one answer."""
    return f"Status: {status}\r\nContent-type: {content_type}\r\n\r\n{body}"


def fpm_status_json(active: int = 0, idle: int = 2, accepted: int = 5, queue: int = 0) -> str:
    return json.dumps({"active processes": active, "idle processes": idle,
                       "total processes": active + idle, "accepted conn": accepted,
                       "listen queue": queue})


def sections_output(parts: Sequence[tuple[str, str, int]]) -> str:
    """What shell.sections prints: per part its name, its output and its exit status."""
    return "".join(f"\n{shell.SECTION} {name}\n{out}\n{shell.SECTION_EXIT} {code}\n"
                   for name, out, code in parts)


def probe_line(layout: Layout, n: int, release: str | None, service: str = "active",
               strays: int = 0, pid: int | None = None) -> str:
    """One line of fpm.probe_command: replica n's master, or none when release is None."""
    if release is None:
        return f"{n}\t-\t-\t-\t-\t-\t{service}\t{strays}\n"
    title = fpm.FPM_MASTER_TITLE.format(conf=layout.fpm_conf(n))
    return "\t".join([str(n), str(pid or 100 + n), "S", "9", title, str(layout.release(release)),
                      service, str(strays)]) + "\n"


# --- one pool on one host, simulated -------------------------------------------------------------

FLAG_TOKENS = {"D": "Dis", "N": "Drn", "S": "Stop", "H": "Stby"}
GARBAGE = "<html><body>502 Proxy Error [/x] [red]</body>"


class FakePool:
    """One pool on one host over a FakeRunner, keyed by what each command is for.

    State: `flags` (balancer-manager's tokens per replica), `pinned` (the release each
    replica's master runs, None: stopped), `current` (current.release), `healthy` (the app's
    health script answers 200; never on a release in `unhealthy_releases`), `busy` (Apache's
    Busy), `fpm` (FPM status per replica: a dict of fpm_status_json's arguments, None: no
    answer), `connections`. Changes (set flags, stop, start, activate) update the state.
    `garbage[kind] = k` answers the next k commands of a kind with text no parser expects:
    "read bm" (balancer-manager read or read back), "idle bm" / "idle fpm" (the parts of the
    idle probe). `on_set` hooks see every flag change.
    """

    def __init__(self, host: Host, pool: Pool, release: str = "v1",
                 runner: FakeRunner | None = None) -> None:
        self.host, self.pool = host, pool
        self.layout = Layout.of(host, pool)
        self.runner = runner or FakeRunner(host)
        self.flags = {n: {"Init", "Ok"} for n in pool.replica_numbers}
        self.pinned: dict[int, str | None] = dict.fromkeys(pool.replica_numbers, release)
        self.current: str | None = release
        self.healthy = dict.fromkeys(pool.replica_numbers, True)
        self.unhealthy_releases: set[str] = set()  # the app's health fails on these
        self.gates: list[Call] = []  # every gate asked, in order
        self.start_reads_pin = True  # False: a start cannot read what its masters pinned
        self.busy = dict.fromkeys(pool.replica_numbers, 0)
        self.fpm: dict[int, dict[str, int] | None] = {n: {} for n in pool.replica_numbers}
        self.connections = dict.fromkeys(pool.replica_numbers, 0)
        self.garbage: dict[str, int] = {}
        self.on_set: list[Callable[[int, dict[str, int]], None]] = []
        name = pool.name
        for matcher, answer in (
                ("read balancer-manager", lambda c: self.answer("read bm", self.page())),
                ("set ", self.set_flags),
                (f"probe {name} replicas and their connections", lambda c: self.probed()),
                (f"probe {name}", lambda c: self.probe()),
                ("ping ", lambda c: self.ping(self.n(c))),
                ("health ", lambda c: self.health_of(self.n(c))),
                ("idle probe", lambda c: self.idle_probe(self.n(c))),
                ("gate ", self.gate),
                (f"read {name} balancer", self.snapshot),
                (f"read {name} retirement", self.snapshot),
                (f"wait for {name} retirement", lambda c: "0\n"),
                ("retire ", self.retire),
                ("enable ", lambda c: ""),
                ("status ", lambda c: self.fpm_answer(self.n(c))[::-1]),
                ("connections to ", lambda c: f"{self.connections[self.n(c)]}\n"),
                ("wait until ", self.unused),
                ("stop ", self.stop),
                ("start ", self.start),
                (f"read {name} current.release", lambda c: self.read_current()),
                ("activate ", self.activate)):
            self.runner.on(matcher, answer)

    # --- handles ---
    @property
    def at(self) -> HostPool:
        return HostPool(self.runner, self.host, self.pool)

    def replica(self, n: int) -> Replica:
        return self.at.replica(n)

    def serving(self) -> list[int]:
        """The replicas in rotation (neither drained, disabled nor stopped)."""
        return [n for n, f in self.flags.items() if not f & {"Dis", "Drn", "Stop"}]

    # --- answers ---
    def n(self, call: Call) -> int:
        found = re.search(rf"\b{re.escape(self.pool.name)}-(\d+)\b", call.what)
        return int(found[1]) if found else 0

    def answer(self, kind: str, good: str) -> str:
        if self.garbage.get(kind, 0) > 0:
            self.garbage[kind] -= 1
            return GARBAGE
        return good

    def page(self) -> str:
        return manager_page(self.pool, self.layout, self.flags, self.busy)

    def probe(self) -> str:
        return "".join(probe_line(self.layout, n, rel) for n, rel in self.pinned.items())

    def probed(self) -> str:
        """status's probe: the masters, and the connections open on each replica's socket."""
        counts = "".join(f"{n} {c}\n" for n, c in self.connections.items())
        return sections_output([("0", self.probe(), 0), ("1", counts, 0)])

    def health_of(self, n: int) -> Any:
        if not self.pinned[n]:
            return (124, "")
        ok = self.healthy[n] and self.pinned[n] not in self.unhealthy_releases
        return fcgi("ok") if ok else fcgi("down", status=500)

    def fpm_answer(self, n: int) -> tuple[str, int]:
        """FPM's status page over replica n's status socket (none: its master is gone)."""
        args = self.fpm[n]
        if args is None or not self.pinned[n]:
            return "", 124
        return fcgi(self.answer("idle fpm", fpm_status_json(**args)), content_type="json"), 0

    def idle_probe(self, n: int) -> str:
        status, code = self.fpm_answer(n)
        return sections_output([("0", self.answer("idle bm", self.page()), 0), ("1", status, code),
                                ("2", str(self.connections[n]), 0)])

    def ping(self, n: int) -> Any:
        return fcgi("pong") if self.pinned[n] else (124, "")

    def gate(self, call: Call) -> str:
        """A set's gate in one round trip: the probe (unless the gate of a parked set, which
        has none), then each replica's health and ping."""
        self.gates.append(call)
        probed = "FPM_FLEET_MASTERS" in call.command
        parts = [("0", self.probe(), 0)] if probed else []
        for n in self.ns(call):
            for answer in (self.health_of(n), self.ping(n)):
                text, code = (answer[1], answer[0]) if isinstance(answer, tuple) else (answer, 0)
                parts.append((str(len(parts)), text, code))
        return sections_output(parts)

    def snapshot(self, call: Call) -> str:
        """The balancer, the probe and (when asked) current.release and the releases (none
        listed) in one round trip, after the wait for a retirement (none) when asked."""
        reads = [self.answer("read bm", self.page()), self.probe()]
        parts = [(text, 0) for text in reads]
        if " retirement" in call.what:
            parts.insert(0, ("0\n", 0))
        if "current.release" in call.what:
            current = self.read_current()
            parts.append((current[1], current[0]) if isinstance(current, tuple) else (current, 0))
        if call.what.endswith("and releases"):
            parts.append(("", 0))
        return sections_output([(str(i), text, code) for i, (text, code) in enumerate(parts)])

    def unused(self, call: Call) -> str:
        """replica.wait_unused's host-side wait: at once for a socket without connections,
        every tick (its bound) for one that keeps some."""
        ticks = int(re.findall(r"wait_unused \S+ (\d+)", call.command)[0])
        return "".join(f"{i} {ticks if self.connections[n] else 0}\n"
                       for i, n in enumerate(self.ns(call)))

    def retire(self, call: Call) -> str:
        """The host's retirement of an old set (retire.py), done at once: stopped, disabled."""
        for n in self.ns(call):
            self.pinned[n] = None
            self.flags[n] |= {"Dis", "Drn"}
        return ""

    def set_flags(self, call: Call) -> str:
        """One member's flags or several (`set fcgi://www-3 {...}, fcgi://www-4 {...}`), in
        the order posted."""
        pattern = rf"\b{re.escape(self.pool.name)}-(\d+) (\{{[^}}]*\}})"
        for number, text in re.findall(pattern, call.what):
            n, flags = int(number), ast.literal_eval(text)
            for flag, value in flags.items():
                (self.flags[n].add if value else self.flags[n].discard)(FLAG_TOKENS[flag])
            for hook in self.on_set:
                hook(n, flags)
        return self.answer("read bm", self.page())

    def ns(self, call: Call) -> list[int]:
        """Every replica a command is for (a set: `stop www-3, www-4`)."""
        return [int(n) for n in re.findall(rf"\b{re.escape(self.pool.name)}-(\d+)\b",
                                          call.what)]

    def stop(self, call: Call) -> str:
        ns = self.ns(call)
        words = {}
        for n in ns:
            words[n] = "stopped" if self.pinned[n] else "not-running"
            self.pinned[n] = None
        if len(ns) == 1 and "stop " + self.pool.replica_name(ns[0]) == call.what:
            return words[ns[0]] + "\n"
        return "".join(f"{n} {w}\n" for n, w in words.items())

    def start(self, call: Call) -> str:
        release = call.what.rsplit(" ", 1)[1]
        ns = self.ns(call)
        for n in ns:
            self.pinned[n] = release
        if len(ns) == 1 and call.what.startswith(f"start {self.pool.replica_name(ns[0])} "):
            return ""
        root = self.layout.release(release) if self.start_reads_pin else "-"
        return "".join(f"{n} ok {root}\n" for n in ns)

    def read_current(self) -> Any:
        return f"releases/{self.current}\n" if self.current else (1, "")

    def activate(self, call: Call) -> str:
        before, self.current = self.current, call.what.split(" ", 1)[1]
        return f"{before or ''}\n"


# --- dry runs ------------------------------------------------------------------------------------

def dry_run(fake: FakePool, work: Callable[[Recorder], object]) -> list[Planned]:
    """The plan a dry run records while `work` drives the real code with a Recorder that
    reads `fake`'s state (and changes nothing of it)."""
    recorder = Recorder(fake.host, fake.runner)
    work(recorder)
    return recorder.plan


def dry_run_deploy(fake: FakePool, source: Path, release: str = "v2",
                   rollback: bool = False) -> list[Planned]:
    """The plan of `fab deploy --release RELEASE` (or of a rollback to RELEASE) of fake's pool
    on its host, from `source`."""
    host, pool = fake.host, fake.pool
    plan = Plan(release=release, command=f"fab {'rollback' if rollback else 'deploy'}",
                timeout=5, source=None if rollback else source,
                manifest=None if rollback else manifest.scan(source))
    sel = Selection((host,), (pool,))
    return dry_run(fake, lambda rec: deploy.each_pool(rec, host, sel, {pool.name: plan},
                                                      EventLog(), rollback=rollback))


# --- events --------------------------------------------------------------------------------------

@dataclass
class EventLog:
    """An observer that keeps every event."""

    events: list[Event] = field(default_factory=list)

    def event(self, ev: Event) -> None:
        self.events.append(ev)

    def steps(self, kind: str = "done") -> list[tuple[str, str, str]]:
        return [(e.host, e.target, e.step) for e in self.events if e.kind == kind]
