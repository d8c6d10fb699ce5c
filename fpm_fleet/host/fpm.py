"""PHP-FPM replicas: FastCGI ping/status/health over a replica's own socket, process probes,
graceful stop and pinned start. Each is a remote Command paired with its reader; nothing
here runs anything (a runner does: `replica.ask(fpm.ping(replica))`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import PurePosixPath

from fpm_fleet.core.errors import RemoteResult
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote import shell
from fpm_fleet.remote.command import Command, action


@dataclass(frozen=True)
class FcgiResponse:
    status: int
    headers: dict[str, str]
    body: str


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
        return self.title == shell.FPM_MASTER_TITLE.format(conf=conf)

    def runs_master(self, layout: Layout) -> bool:
        """Alive, and really replica n's php-fpm master (not a reused pid)."""
        return self.alive and self.is_master_of(layout.fpm_conf(self.n))

    @property
    def alive(self) -> bool:
        return self.pid is not None and self.state not in ("-", "Z", "X")

    @property
    def release(self) -> str | None:
        """The release name the master pinned (basename of the bind mount's source)."""
        if not self.pinned:
            return None
        return PurePosixPath(self.pinned.removesuffix("//deleted")).name

    @property
    def release_deleted(self) -> bool:
        return bool(self.pinned and self.pinned.endswith("//deleted"))


def unescape_mountinfo(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_probe(output: str) -> dict[int, Process]:
    """Lines from shell.probe_replicas -> Process per replica number."""
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


def probe(at: HostPool, numbers: list[int] | None = None) -> Command[dict[int, Process]]:
    """Each replica's master as the host sees it (one line per replica: shell.probe_replicas)."""
    nums = numbers or list(at.pool.replica_numbers)

    def read(result: RemoteResult) -> dict[int, Process]:
        found = parse_probe(result.stdout)
        return {n: found.get(n, replace(NOT_RUNNING, n=n)) for n in nums}

    return Command(shell.probe_replicas(at.layout, nums), f"probe {at.pool.name} replicas", read)


def running_master(r: Replica) -> Command[Process | None]:
    """Replica n's master if it is alive and really is that replica's php-fpm master."""
    def read(result: RemoteResult) -> Process | None:
        proc = parse_probe(result.stdout).get(r.n)
        return proc if proc is not None and proc.runs_master(r.at.layout) else None

    return Command(shell.probe_replicas(r.at.layout, [r.n]), f"probe {r.name}", read)


def _fcgi(sock: PurePosixPath, script: str, filename: PurePosixPath | str, what: str,
          query: str = "") -> Command[FcgiResponse | None]:
    """One FastCGI request; None when the socket does not answer at all."""
    return Command(shell.fcgi_request(sock, script, filename, query), what,
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
    return Command(shell.open_connections(r.sock), f"connections to {r.name}",
                   lambda res: int(res.stdout.strip() or 0))


def start(r: Replica, release: str) -> Command[RemoteResult]:
    return action(shell.fpm_start(r.at.layout, r.n, release, r.host.sudo),
                  f"start {r.name} pinned to {release}")


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
    """shell.fpm_stop's words: `strays N`, `escalated`, then `stopped` or `not-running`."""
    words = output.split()
    if words[-1:] not in (["stopped"], ["not-running"]):
        raise ValueError(f"unexpected answer from the stop: {output.strip()[:120]!r}")
    strays = "strays" in words
    if "escalated" in words:
        return Stopped(StopOutcome.ESCALATED, strays)
    return Stopped(StopOutcome(words[-1]), strays)


def stop(r: Replica) -> Command[Stopped]:
    """Graceful stop of the replica's service (bounded by its own stop_timeout)."""
    return Command(shell.fpm_stop(r.at.layout, r.n, r.host.sudo), f"stop {r.name}",
                   lambda res: parse_stop(res.stdout), changes=True,
                   timeout=r.pool.stop_timeout + 30,
                   assume=lambda: Stopped(StopOutcome.STOPPED))


def disable(r: Replica) -> Command[RemoteResult]:
    """A replica stopped by the operator stays stopped at the next boot."""
    return action(shell.fpm_disable(r.at.layout, r.n, r.host.sudo), f"disable {r.name} at boot")


def current_release(at: HostPool) -> Command[str | None]:
    """The release name current.release points to now (None when it does not exist)."""
    def read(res: RemoteResult) -> str | None:
        target = res.stdout.strip()
        return PurePosixPath(target).name if res.ok and target else None

    return Command(shell.read_current_release(at.layout), f"read {at.pool.name} current.release",
                   read, check=False)
