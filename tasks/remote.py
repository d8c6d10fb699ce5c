"""The one way fpm-fleet reaches a host: a connection factory and one executor.

Host keys: unknown keys are refused (paramiko RejectPolicy) unless the inventory opts in
with `trust_new_host_keys = true`; Fabric alone would add them silently.
Every command goes through `Executor.run`, which applies sudo, logs the command and its
output to the log file (never to the terminal), and raises RemoteError on failure.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol

import paramiko
from fabric import Connection

from .errors import ConfigError, ConnectError, RemoteError, RemoteResult
from .inventory import Host
from .shell import as_root

log = logging.getLogger("fpm_fleet.remote")
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"


class Executor(Protocol):
    """Runs remote commands on one host. SSHExecutor in real life, fakes in unit tests."""

    host: Host

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult: ...

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]: ...


def _load_host_keys(client: paramiko.SSHClient, host: Host) -> None:
    if host.known_hosts:
        path = os.path.expanduser(host.known_hosts)
        if not os.path.exists(path):
            raise ConfigError(f"{host.name}: known_hosts file {path} does not exist")
        client.load_host_keys(path)
        return
    client.load_system_host_keys()
    if os.path.exists(SYSTEM_KNOWN_HOSTS):
        client.load_system_host_keys(SYSTEM_KNOWN_HOSTS)


def connect(host: Host) -> Connection:
    """Open an SSH connection to `host` with strict host-key checking and a connect timeout."""
    kwargs: dict[str, object] = {"banner_timeout": host.connect_timeout,
                                 "auth_timeout": host.connect_timeout}
    if host.identity_file:
        kwargs["key_filename"] = [os.path.expanduser(host.identity_file)]
        kwargs["look_for_keys"] = False
    conn = Connection(host.address, user=host.user, port=host.port,
                      connect_timeout=int(max(1, host.connect_timeout)), connect_kwargs=kwargs)
    _load_host_keys(conn.client, host)
    policy: paramiko.MissingHostKeyPolicy = (
        paramiko.AutoAddPolicy() if host.trust_new_host_keys else paramiko.RejectPolicy())
    conn.client.set_missing_host_key_policy(policy)
    where = f"{host.name} ({host.user}@{host.address}:{host.port})"
    try:
        conn.open()
    except paramiko.BadHostKeyException:
        raise ConnectError(f"{where}: host key does not match known_hosts "
                           "(possible man-in-the-middle); refusing to connect") from None
    except paramiko.SSHException as exc:
        if "not found in known_hosts" in str(exc):
            raise ConnectError(f"{where}: unknown host key; add it to known_hosts or set "
                               "trust_new_host_keys = true") from None
        raise ConnectError(f"{where}: SSH failed: {exc}") from None
    except (TimeoutError, OSError, EOFError) as exc:
        raise ConnectError(f"{where}: unreachable: {exc or type(exc).__name__}") from None
    _no_delay(conn)
    return conn


def _no_delay(conn: Connection) -> None:
    """Disable Nagle: small command/answer exchanges otherwise stall ~40 ms on delayed ACKs."""
    transport = conn.client.get_transport()
    sock = getattr(transport, "sock", None)
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class SSHExecutor:
    """Executor over one Fabric connection."""

    def __init__(self, host: Host, conn: Connection) -> None:
        self.host = host
        self.conn = conn

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        result, _ = self._exec(command, what, None, timeout)
        if check and not result.ok:
            raise RemoteError(self.host.name, what, result)
        return result

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]:
        """Run `command` with `source` written to its stdin (a raw channel: fast)."""
        result, sent = self._exec(command, what, source, timeout)
        if not result.ok:
            raise RemoteError(self.host.name, what, result)
        return result, sent

    def _exec(self, command: str, what: str, source: IO[bytes] | None,
              timeout: float | None) -> tuple[RemoteResult, int]:
        """One exec channel on the Fabric connection's transport (Fabric's own `run` adds
        threads and a 10 ms input poll per command; this is the hot path of a rollout)."""
        transport = self.conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectError(f"{self.host.name}: connection lost before {what}")
        full = as_root(command, self.host.sudo)
        limit = timeout or self.host.command_timeout
        started = time.monotonic()
        sent = 0
        try:
            chan = transport.open_session(timeout=self.host.connect_timeout)
            try:
                chan.settimeout(limit)
                chan.exec_command(full)
                if source is not None:
                    sent = _pump(chan, source)
                chan.shutdown_write()
                stdout, stderr, code = _drain(chan, started + limit)
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"{self.host.name}: connection lost during {what}: "
                               f"{exc or type(exc).__name__}") from None
        result = RemoteResult(command, code, stdout, stderr)
        _log(self.host.name, what, result, time.monotonic() - started, source is not None)
        return result, sent

    def close(self) -> None:
        self.conn.close()


def _pump(chan: paramiko.Channel, source: IO[bytes]) -> int:
    sent = 0
    while chunk := source.read(256 * 1024):
        chan.sendall(chunk)
        sent += len(chunk)
    return sent


def _drain(chan: paramiko.Channel, deadline: float) -> tuple[str, str, int]:
    """Read stdout and stderr until the command exits; exit 124 on timeout."""
    out, err = bytearray(), bytearray()
    while True:
        busy = False
        if chan.recv_ready():
            out += chan.recv(65536)
            busy = True
        if chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            busy = True
        pending = chan.recv_ready() or chan.recv_stderr_ready()
        # sshd may send exit-status before the last output: wait for EOF as well.
        if not pending and chan.eof_received and chan.exit_status_ready():
            return out.decode(errors="replace"), err.decode(errors="replace"), \
                chan.recv_exit_status()
        if not pending and chan.closed:
            transport = chan.get_transport()
            if transport is None or not transport.is_active():
                raise EOFError("the connection closed before the command finished")
            return out.decode(errors="replace"), err.decode(errors="replace"), -1
        if time.monotonic() > deadline:
            return out.decode(errors="replace"), "timed out", 124
        if not busy:
            time.sleep(0.001)


def _log(host: str, what: str, result: RemoteResult, seconds: float,
         sent_note: bool = False) -> None:
    log.info("[%s] %s: exit %s in %.3fs%s\n$ %s%s%s", host, what, result.exited, seconds,
             " (stdin streamed)" if sent_note else "", result.command,
             _indent("out", result.stdout), _indent("err", result.stderr))


def _indent(label: str, text: str) -> str:
    if not text.strip():
        return ""
    lines = text.rstrip("\n").splitlines()
    if len(lines) > 60:
        lines = [*lines[:30], f"... {len(lines) - 60} lines ...", *lines[-30:]]
    return "\n" + "\n".join(f"  {label}| {line}" for line in lines)


@contextmanager
def session(host: Host) -> Iterator[SSHExecutor]:
    """An executor for the duration of a block; the connection is always closed."""
    executor = SSHExecutor(host, connect(host))
    try:
        yield executor
    finally:
        executor.close()
