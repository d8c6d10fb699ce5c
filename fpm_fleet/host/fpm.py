"""PHP-FPM replicas: FastCGI ping/status/health over a replica's own socket, process probes,
graceful stop and pinned start. Each is a remote Command paired with its reader; nothing
here runs anything (a runner does: `replica.ask(fpm.ping(replica))`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import PurePosixPath

from fpm_fleet.core.errors import RemoteResult
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote.command import Command, action
from fpm_fleet.remote.shell import (
    PathLike,
    privileged,
    q,
    replica_command,
    script,
    with_replica_lib,
)

FPM_MASTER_TITLE = "php-fpm: master process ({conf})"


# --- the command texts ---------------------------------------------------------------------

def fcgi_command(sock: PathLike, script_name: str, script_filename: PathLike,
                 query: str = "", timeout: float = 5) -> str:
    """One FastCGI request straight to a replica's socket (Debian's libfcgi-bin)."""
    env = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script_name,
           "SCRIPT_FILENAME": str(script_filename), "QUERY_STRING": query,
           "REQUEST_URI": script_name + (f"?{query}" if query else ""),
           "SERVER_NAME": "fpm-fleet", "REMOTE_ADDR": "127.0.0.1"}
    assigns = " ".join(q(f"{k}={v}") for k, v in env.items())
    return f"timeout {timeout:g} env -i {assigns} cgi-fcgi -bind -connect {q(sock)}"


def mountinfo_escape(path: PathLike) -> str:
    """How /proc/PID/mountinfo writes a path (space, tab, newline, backslash as octal)."""
    table = {" ": "\\040", "\t": "\\011", "\n": "\\012", "\\": "\\134"}
    return "".join(table.get(c, c) for c in str(path))


PROBE_FUNCTION = with_replica_lib(script("probe.sh"))


def probe_command(layout: Layout, numbers: Iterable[int]) -> str:
    """One TSV line per replica: n, pid, state, elapsed s, process title, pinned mount root,
    the service's state (systemctl is-active) and how many of its workers run outside its
    live master (a master that died leaves them serving until they finish)."""
    nums = list(numbers)
    # what is read for every replica at once: the process table, the masters (one ps), the
    # services' states (one systemctl: is-active prints one line per unit, in order), the
    # pid files (the shell's own read), the strays (one awk) and the pinned mounts (one
    # awk); a process costs a few ms on the host, and this runs in every preflight and gate
    pids = [f"_pid{n}=; read -r _pid{n} 2>/dev/null <{q(layout.pid(n))}; "
            f"case $_pid{n} in ''|*[!0-9]*) _pid{n}=-;; esac" for n in nums]
    strays = " ".join(f"\"$_pid{n} \"{q(f'php-fpm: pool {layout.replica(n)}')}"
                      for n in nums)
    lines = [
        PROBE_FUNCTION, "FPM_FLEET_PS=$(ps -eo pid=,ppid=,args=)", *pids,
        # every master's state, age and title in one ps (none when no pid file names one)
        "_masters=; for _p in " + " ".join(f"$_pid{n}" for n in nums)
        + '; do [ "$_p" = - ] || _masters="$_masters,$_p"; done; FPM_FLEET_MASTERS=; '
        '[ -z "$_masters" ] || FPM_FLEET_MASTERS=$(ps -o pid=,stat=,etimes=,args= '
        '-p "${_masters#,}" 2>/dev/null)',
        _read_lines([f"_unit{n}" for n in nums],
                    "systemctl is-active " + " ".join(q(layout.unit(n)) for n in nums)
                    + " 2>/dev/null"),
        _read_lines([f"_strays{n}" for n in nums], f"count_strays {strays}"),
        _read_lines([f"_pinned{n}" for n in nums],
                    f"mount_roots {q(mountinfo_escape(layout.current))} "
                    + " ".join(f"\"$_pid{n}\"" for n in nums)),
        "; ".join(f"probe {n} \"$_pid{n}\" \"$_pinned{n}\" \"$_unit{n}\" \"$_strays{n}\""
                  for n in nums)]
    return "\n".join(lines)


def _read_lines(names: list[str], command: str) -> str:
    """Shell text that sets one variable per line of `command`'s output, in order."""
    reads = " ".join(f"read -r {name};" for name in names)
    return f"{{ {reads} }} <<LINES\n$({command})\nLINES"


def connections_command(sock: PathLike) -> str:
    """How many connections to a listening unix socket are open right now (accepted or
    queued), from the kernel's table: requests in flight, even to workers whose master died."""
    return with_replica_lib(f"open_connections {q(sock)}")


def connections_by_replica_command(layout: Layout, numbers: Iterable[int]) -> str:
    """One `N COUNT` line per replica: the connections open on its socket now
    (connections_command's count, for each replica of a pool at once)."""
    return with_replica_lib("; ".join(
        f"printf '%s %s\\n' {n} \"$(open_connections {q(layout.sock(n))})\"" for n in numbers))


def current_release_command(layout: Layout) -> str:
    return f"readlink -- {q(layout.current_release)}"


def start_command(layout: Layout, n: int, release: str, sudo: bool) -> str:
    """Start replica n's service; systemd pins it to what current.release names (its unit
    bind-mounts current.release on current/ in the service's own mount namespace), so
    `release` must be what current.release names now. Enabled, so it starts at boot too.

    Type=notify: systemctl returns once FPM listens. A failure prints the unit's last log.
    """
    def root(verb: str) -> str:
        return _as_root(layout, n, verb, sudo)

    return (f"{_names_release(layout, release)}; "
            f"{root('reset-failed')} 2>/dev/null; "
            f"{root('enable')} && {root('start')} || "
            f"{{ {root('journal')} >&2; exit 1; }}")


def _as_root(layout: Layout, n: int, verb: str, sudo: bool) -> str:
    """One of the root actions on replica n's service the sudoers file allows, word for
    word (shell.replica_command)."""
    return privileged(replica_command(verb, layout.unit(n)), sudo)


def _unit_result(layout: Layout, n: int) -> str:
    """The shell expansion of replica n's unit Result (success, timeout, start-limit-hit...):
    a read, no sudo."""
    return f"$(systemctl show -p Result --value {q(layout.unit(n))})"


def _names_release(layout: Layout, release: str) -> str:
    """Exit 3 unless current.release names `release` (what a starting replica pins)."""
    return (f"[ \"$(basename -- \"$(readlink -- {q(layout.current_release)})\")\" = "
            f"{q(release)} ] || {{ echo {q(f'current.release does not name {release}')} >&2; "
            "exit 3; }")


def start_set_command(layout: Layout, numbers: Iterable[int], release: str, sudo: bool,
                      enable: bool = True, reset: Iterable[int] | None = None) -> str:
    """Start several replicas at once (each `systemctl start` waits for its own FPM to
    listen, so they run side by side); prints `N ok ROOT` or `N failed` per replica, a
    failed one's last log lines on stderr. ROOT is what the new master pinned: the source
    of the mount on current/ in its namespace (mountinfo's escapes, "-" for none), read by
    the shell, so that the set's gate need not probe the host again. Without `enable` the
    services are not enabled at boot here: a surge rollout leaves that to the host once the
    new set serves (rollout/retire.py), off the path to the flip. `reset`: the replicas
    whose failed state is cleared first (default all; a caller that knows which units
    failed saves a sudo each on the path). A start systemd refuses for its start limit (the
    unit's StartLimitBurst starts within StartLimitIntervalSec, there against crash loops,
    reached by surges in quick succession: each set starts every other rollout) is reset
    and tried once more: it is a deliberate start, not a loop."""
    to_reset = set(numbers if reset is None else reset)

    def one(n: int) -> str:
        def root(verb: str) -> str:
            return _as_root(layout, n, verb, sudo)
        limited = f"[ \"{_unit_result(layout, n)}\" = start-limit-hit ]"
        again = f"{limited} && {root('reset-failed')} && {root('start')}"
        started = f"{{ {root('start')} || {{ {again}; }}; }}"
        start = f"{root('enable')} && {started}" if enable else started
        clear = f"{root('reset-failed')} 2>/dev/null; " if n in to_reset else ""
        pinned = (f"_pid=; read -r _pid <{q(layout.pid(n))}; _root=$(mount_roots "
                  f"{q(mountinfo_escape(layout.current))} \"${{_pid:-0}}\")")
        return (f"{{ {clear}{start} && {{ {pinned}; echo \"{n} ok $_root\"; }} "
                f"|| {{ echo '{n} failed'; {root('journal')} >&2; }}; }} &")

    return with_replica_lib(f"{_names_release(layout, release)}; "
                            + " ".join(one(n) for n in numbers) + " wait")


def unused_command(socks: Iterable[PathLike], ticks: int) -> str:
    """Wait until each socket has had no connection open for two readings 0.1 s apart (at
    most `ticks` tenths of a second: replica-lib.sh's wait_unused), the sockets side by
    side; prints `I TENTHS` per socket, I its index in `socks`."""
    waits = " ".join(f"echo \"{i} $(wait_unused {q(s)} {ticks})\" &"
                     for i, s in enumerate(socks))
    return with_replica_lib(f"{waits} wait")


def stop_set_command(layout: Layout, numbers: Iterable[int], sudo: bool,
                     disable: bool = True) -> str:
    """Stop several replicas at once, each gracefully (stop_command) and, with `disable`,
    disabled at boot (a sudo each: left out when the same units start again next); each
    line of a replica's answer is prefixed with its number."""
    def one(n: int) -> str:
        then = f" && {disable_command(layout, n, sudo)}" if disable else ""
        return f"{{ ( {stop_command(layout, n, sudo)} ){then}; }} | sed 's/^/{n} /' &"

    return " ".join(one(n) for n in numbers) + " wait"


def stop_command(layout: Layout, n: int, sudo: bool) -> str:
    """Stop replica n's service: systemd sends SIGQUIT (graceful) to the master, which
    stops its workers; the unit's ExecStopPost lets workers of a dead master finish, then
    stops them (SIGKILL only after TimeoutStopSec). Prints `not-running` or `stopped`,
    after `escalated` when the timeout hit and `strays N` when N workers were running
    without their master."""
    unit = q(layout.unit(n))
    strays = (f"count_workers_outside \"$(systemctl show -p MainPID --value {unit})\" "
              f"{q(f'php-fpm: pool {layout.replica(n)}')}")
    return with_replica_lib(
        f"s=$({strays}); [ \"$s\" = 0 ] || echo \"strays $s\"; "
        f"if systemctl is-active --quiet {unit} || [ \"$s\" != 0 ]; then "
        f"{_as_root(layout, n, 'stop', sudo)} || exit 1; "
        f"[ \"{_unit_result(layout, n)}\" != timeout ] || echo escalated; "
        f"echo stopped; else echo not-running; fi")


def enable_command(layout: Layout, n: int, sudo: bool) -> str:
    """Start replica n's service at boot. A unit enabled already is left alone (a sudo
    saved): a rollback to a parked set, or a deploy into its slots, finds its units
    enabled."""
    return (f"systemctl is-enabled --quiet {q(layout.unit(n))} || "
            f"{_as_root(layout, n, 'enable', sudo)}")


def disable_command(layout: Layout, n: int, sudo: bool) -> str:
    """Keep a stopped replica stopped across reboots (`fab start` enables it again)."""
    return _as_root(layout, n, "disable", sudo)


# --- answers ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FcgiResponse:
    status: int
    headers: dict[str, str]
    body: str


def parse_counts(output: str) -> dict[int, int]:
    """`N COUNT` lines (connections_by_replica_command's per replica, unused_command's per
    socket) -> COUNT per N; an N without its line is left out: its count is unknown."""
    counts: dict[int, int] = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 2 and words[0].isdigit() and words[1].isdigit():
            counts[int(words[0])] = int(words[1])
    return counts


def parse_fcgi(output: str) -> FcgiResponse:
    """cgi-fcgi output (CGI headers, blank line, body) -> status, headers, body."""
    text = output.replace("\r\n", "\n")
    head, sep, body = text.partition("\n\n")
    if not sep:
        return FcgiResponse(status=0, headers={}, body=text)
    headers: dict[str, str] = {}
    for line in head.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            headers[key.strip().lower()] = value.strip()
    match = re.match(r"(\d{3})", headers.get("status", "200"))
    return FcgiResponse(status=int(match.group(1)) if match else 0, headers=headers, body=body)


@dataclass(frozen=True)
class FpmStatus:
    active: int
    idle: int
    total: int
    accepted: int
    listen_queue: int


def parse_status(body: str) -> FpmStatus:
    """FPM `status?json` body. Over pm.status_listen the status request itself is not counted."""
    try:
        data = json.loads(body)
        return FpmStatus(active=int(data["active processes"]), idle=int(data["idle processes"]),
                         total=int(data["total processes"]), accepted=int(data["accepted conn"]),
                         listen_queue=int(data["listen queue"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"unexpected FPM status answer: {body[:120]!r} ({exc})") from None


@dataclass(frozen=True)
class Process:
    """What the host says about replica n's master process."""

    n: int
    pid: int | None
    state: str
    elapsed: int | None
    title: str
    pinned: str | None
    service: str = "-"
    strays: int = 0

    def is_master_of(self, conf: PurePosixPath) -> bool:
        return self.title == FPM_MASTER_TITLE.format(conf=conf)

    def runs_master(self, layout: Layout) -> bool:
        """Alive, and really replica n's php-fpm master (not a reused pid)."""
        return self.alive and self.is_master_of(layout.fpm_conf(self.n))

    @property
    def alive(self) -> bool:
        return self.pid is not None and self.state not in ("-", "Z", "X")

    @property
    def release(self) -> str | None:
        """The release name the master pinned (basename of the bind mount's source)."""
        return release_of_root(self.pinned)

    @property
    def release_deleted(self) -> bool:
        return bool(self.pinned and self.pinned.endswith("//deleted"))


def release_of_root(root: str | None) -> str | None:
    """The release a pinned mount's source names: its basename (a deleted one's too)."""
    return PurePosixPath(root.removesuffix("//deleted")).name if root else None


def unescape_mountinfo(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_probe(output: str) -> dict[int, Process]:
    """Lines from probe_command -> Process per replica number."""
    out: dict[int, Process] = {}
    for line in output.splitlines():
        fields = line.split("\t")
        if len(fields) != 8 or not fields[0].isdigit():
            continue
        n, pid, state, elapsed, title, pinned, service, strays = fields
        out[int(n)] = Process(
            n=int(n), pid=int(pid) if pid.isdigit() else None, state=state,
            elapsed=int(elapsed) if elapsed.isdigit() else None,
            title="" if title == "-" else title,
            pinned=None if pinned == "-" else unescape_mountinfo(pinned),
            service=service, strays=int(strays) if strays.isdigit() else 0)
    return out


# --- commands, each with its reader -----------------------------------------------------------

NOT_RUNNING = Process(0, None, "-", None, "", None)


def pinned_releases(procs: dict[int, Process]) -> set[str]:
    """The releases the live masters among `procs` run (pure): never removed or replaced."""
    return {p.release for p in procs.values() if p.alive and p.release}


def probe(at: HostPool, numbers: list[int] | None = None) -> Command[dict[int, Process]]:
    """Each replica's master as the host sees it (one line per replica: probe_command)."""
    nums = numbers or list(at.pool.replica_numbers)

    def read(result: RemoteResult) -> dict[int, Process]:
        found = parse_probe(result.stdout)
        return {n: found.get(n, replace(NOT_RUNNING, n=n)) for n in nums}

    return Command(probe_command(at.layout, nums), f"probe {at.pool.name} replicas", read)


def running_master(r: Replica) -> Command[Process | None]:
    """Replica n's master if it is alive and really is that replica's php-fpm master."""
    def read(result: RemoteResult) -> Process | None:
        proc = parse_probe(result.stdout).get(r.n)
        return proc if proc is not None and proc.runs_master(r.at.layout) else None

    return Command(probe_command(r.at.layout, [r.n]), f"probe {r.name}", read)


def _fcgi(sock: PurePosixPath, script: str, filename: PurePosixPath | str, what: str,
          query: str = "") -> Command[FcgiResponse | None]:
    """One FastCGI request; None when the socket does not answer at all."""
    return Command(fcgi_command(sock, script, filename, query), what,
                   lambda res: parse_fcgi(res.stdout) if res.ok else None, check=False)


def answers_pong(resp: FcgiResponse | None) -> bool:
    return resp is not None and resp.status == 200 and resp.body.strip() == "pong"


def ping(r: Replica) -> Command[bool]:
    req = _fcgi(r.sock, r.pool.ping_path, r.pool.ping_path, f"ping {r.name}")
    return Command(req.text, req.what, lambda res: answers_pong(req.read(res)), check=False)


def health(r: Replica) -> Command[FcgiResponse | None]:
    """The app's own health script, run by this replica (so from its pinned release)."""
    return _fcgi(r.sock, r.pool.health_path,
                 f"{r.at.layout.pinned_web_root}{r.pool.health_path}", f"health {r.name}")


def fpm_status(r: Replica) -> Command[FpmStatus | None]:
    """FPM's own status over the replica's status socket; None when it does not answer."""
    req = _fcgi(r.at.layout.status_sock(r.n), r.pool.status_path, r.pool.status_path,
                f"status {r.name}", query="json")

    def read(res: RemoteResult) -> FpmStatus | None:
        resp = req.read(res)
        return parse_status(resp.body) if resp is not None and resp.status == 200 else None

    return Command(req.text, req.what, read, check=False)


def connections(r: Replica) -> Command[int]:
    """Connections open on the replica's socket now (requests in flight, even to workers of
    a master that died)."""
    return Command(connections_command(r.sock), f"connections to {r.name}",
                   lambda res: int(res.stdout.strip() or 0))


def connections_by_replica(at: HostPool, numbers: list[int]) -> Command[dict[int, int]]:
    """Connections open on each replica's socket now: its requests in flight, queued ones
    too (a stopped replica's socket is gone: 0)."""
    return Command(connections_by_replica_command(at.layout, numbers),
                   f"connections to {at.pool.name} replicas",
                   lambda res: parse_counts(res.stdout))


def start(r: Replica, release: str) -> Command[RemoteResult]:
    return action(start_command(r.at.layout, r.n, release, r.host.sudo),
                  f"start {r.name} pinned to {release}")


@dataclass(frozen=True)
class Started:
    """Whether replica n started, and the release its new master pinned (None: unknown)."""

    ok: bool
    release: str | None = None


def parse_started(output: str, numbers: Iterable[int]) -> dict[int, Started]:
    """start_set_command's `N ok ROOT` / `N failed` lines, per replica (not said: failed)."""
    said = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) in (2, 3) and words[0].isdigit() and words[1] in ("ok", "failed"):
            root = words[2] if len(words) == 3 and words[2] != "-" else None
            said[int(words[0])] = Started(words[1] == "ok",
                                          release_of_root(root and unescape_mountinfo(root)))
    return {n: said.get(n, Started(False)) for n in numbers}


def start_set(at: HostPool, numbers: list[int], release: str, enable: bool = True,
              reset: Iterable[int] | None = None) -> Command[dict[int, Started]]:
    return Command(start_set_command(at.layout, numbers, release, at.host.sudo, enable, reset),
                   f"start {', '.join(at.pool.replica_name(n) for n in numbers)} pinned to "
                   f"{release}", lambda res: parse_started(res.stdout, numbers), changes=True,
                   timeout=at.host.command_timeout,
                   assume=lambda: dict.fromkeys(numbers, Started(True, release)))


class StopOutcome(Enum):
    STOPPED = "stopped"
    ESCALATED = "escalated"  # stop_timeout passed: systemd sent SIGKILL
    NOT_RUNNING = "not-running"


@dataclass(frozen=True)
class Stopped:
    outcome: StopOutcome
    strays: bool = False  # workers of a dead master were running, and were stopped too

    def __str__(self) -> str:
        return self.outcome.value + (", workers of a dead master stopped" if self.strays else "")


def parse_stop(output: str) -> Stopped:
    """stop_command's words: `strays N`, `escalated`, then `stopped` or `not-running`."""
    words = output.split()
    if words[-1:] not in (["stopped"], ["not-running"]):
        raise ValueError(f"unexpected answer from the stop: {output.strip()[:120]!r}")
    strays = "strays" in words
    if "escalated" in words:
        return Stopped(StopOutcome.ESCALATED, strays)
    return Stopped(StopOutcome(words[-1]), strays)


def stop(r: Replica) -> Command[Stopped]:
    """Graceful stop of the replica's service (bounded by its own stop_timeout)."""
    return Command(stop_command(r.at.layout, r.n, r.host.sudo), f"stop {r.name}",
                   lambda res: parse_stop(res.stdout), changes=True,
                   timeout=r.pool.stop_timeout + 30,
                   assume=lambda: Stopped(StopOutcome.STOPPED))


def parse_stopped_set(output: str, numbers: Iterable[int]) -> dict[int, Stopped]:
    """stop_set_command's prefixed lines -> each replica's Stopped (ValueError: a replica
    said nothing it could be read by)."""
    words: dict[int, list[str]] = {}
    for line in output.splitlines():
        n, _, rest = line.partition(" ")
        if n.isdigit():
            words.setdefault(int(n), []).append(rest)
    return {n: parse_stop("\n".join(words.get(n, []))) for n in numbers}


def stop_set(at: HostPool, numbers: list[int],
             disable: bool = True) -> Command[dict[int, Stopped]]:
    return Command(stop_set_command(at.layout, numbers, at.host.sudo, disable),
                   f"stop {', '.join(at.pool.replica_name(n) for n in numbers)}",
                   lambda res: parse_stopped_set(res.stdout, numbers), changes=True,
                   timeout=at.pool.stop_timeout + 30,
                   assume=lambda: dict.fromkeys(numbers, Stopped(StopOutcome.STOPPED)))


def disable(r: Replica) -> Command[RemoteResult]:
    """A replica stopped by the operator stays stopped at the next boot."""
    return action(disable_command(r.at.layout, r.n, r.host.sudo), f"disable {r.name} at boot")


def current_release(at: HostPool) -> Command[str | None]:
    """The release name current.release points to now (None when it does not exist)."""
    def read(res: RemoteResult) -> str | None:
        target = res.stdout.strip()
        return PurePosixPath(target).name if res.ok and target else None

    return Command(current_release_command(at.layout), f"read {at.pool.name} current.release",
                   read, check=False)
