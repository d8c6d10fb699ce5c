"""PHP-FPM replicas: FastCGI ping/status/health over a replica's own socket, process probes,
graceful stop and pinned start. Parsers are pure; the operations take an Executor.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

from fpm_fleet.errors import AnswerError, RemoteError, RolloutError
from fpm_fleet.host.layout import Layout
from fpm_fleet.inventory import Host, Pool
from fpm_fleet.remote import shell
from fpm_fleet.remote.ssh import Executor


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


# --- operations ------------------------------------------------------------------------------

def probe(ex: Executor, host: Host, pool: Pool, numbers: list[int] | None = None
          ) -> dict[int, Process]:
    layout = Layout.of(host, pool)
    nums = numbers or list(pool.replica_numbers)
    result = ex.run(shell.probe_replicas(layout, nums), f"probe {pool.name} replicas")
    found = parse_probe(result.stdout)
    return {n: found.get(n, Process(n, None, "-", None, "", None)) for n in nums}


def running_master(ex: Executor, host: Host, pool: Pool, n: int) -> Process | None:
    """Replica n's master if it is alive and really is that replica's php-fpm master."""
    proc = probe(ex, host, pool, [n])[n]
    if proc.runs_master(Layout.of(host, pool)):
        return proc
    return None


def request(ex: Executor, sock: PurePosixPath, script: str, filename: PurePosixPath | str,
            what: str, query: str = "") -> FcgiResponse | None:
    """One FastCGI request; None when the socket does not answer at all."""
    result = ex.run(shell.fcgi_request(sock, script, filename, query), what, check=False)
    if not result.ok:
        return None
    return parse_fcgi(result.stdout)


def ping(ex: Executor, host: Host, pool: Pool, n: int) -> bool:
    layout = Layout.of(host, pool)
    resp = request(ex, layout.sock(n), pool.ping_path, pool.ping_path, f"ping {pool.name}-{n}")
    return resp is not None and resp.status == 200 and resp.body.strip() == "pong"


def health(ex: Executor, host: Host, pool: Pool, n: int) -> FcgiResponse | None:
    """The app's own health script, run by this replica (so from its pinned release)."""
    layout = Layout.of(host, pool)
    return request(ex, layout.sock(n), pool.health_path,
                   f"{layout.pinned_web_root}{pool.health_path}", f"health {pool.name}-{n}")


def status(ex: Executor, host: Host, pool: Pool, n: int) -> FpmStatus | None:
    layout = Layout.of(host, pool)
    resp = request(ex, layout.status_sock(n), pool.status_path, pool.status_path,
                   f"status {pool.name}-{n}", query="json")
    if resp is None or resp.status != 200:
        return None
    try:
        return parse_status(resp.body)
    except ValueError as exc:
        raise AnswerError(f"{host.name}: {pool.name}-{n}: {exc}") from None


def start(ex: Executor, host: Host, pool: Pool, n: int, release: str) -> None:
    layout = Layout.of(host, pool)
    try:
        ex.run(shell.fpm_start(layout, n, release, host.sudo),
               f"start {pool.name}-{n} pinned to {release}")
    except RemoteError as exc:
        raise RolloutError(f"{host.name}: {pool.name}-{n} did not start: {exc}") from None


def stop(ex: Executor, host: Host, pool: Pool, n: int) -> str:
    """Graceful stop of the replica's service; returns 'stopped', 'escalated' or 'not-running'
    (with a note when workers of a dead master were stopped too)."""
    layout = Layout.of(host, pool)
    try:
        result = ex.run(shell.fpm_stop(layout, n, host.sudo), f"stop {pool.name}-{n}",
                        timeout=pool.stop_timeout + 30)
    except RemoteError as exc:
        raise RolloutError(f"{host.name}: {pool.name}-{n} could not be stopped: {exc}") from None
    words = result.stdout.split()
    if "escalated" in words:
        return "escalated"
    strays = "strays" in words
    outcome = "not-running" if words[-1:] == ["not-running"] else "stopped"
    return f"{outcome}, workers of a dead master stopped" if strays else outcome


def disable(ex: Executor, host: Host, pool: Pool, n: int) -> None:
    """A replica stopped by the operator stays stopped at the next boot."""
    ex.run(shell.fpm_disable(Layout.of(host, pool), n, host.sudo),
           f"disable {pool.name}-{n} at boot")


def current_release(ex: Executor, host: Host, pool: Pool) -> str | None:
    """The release name current.release points to now (None when it does not exist)."""
    result = ex.run(shell.read_current_release(Layout.of(host, pool)),
                    f"read {pool.name} current.release", check=False)
    target = result.stdout.strip()
    return PurePosixPath(target).name if result.ok and target else None
