"""The one way fpm-fleet reaches a host: a connection factory and the SSH runner.

Host keys: unknown keys are refused (paramiko RejectPolicy) unless the inventory opts in
with `trust_new_host_keys = true`; Fabric alone would add them silently.
Every command goes through `SSHRunner.run`, which logs the command and its output to the log
file (never to the terminal) and raises RemoteError on failure. Commands run as the login
user: uploads, hooks, activation and state files never run as root. The few root commands a
deploy needs (a replica's service) carry their own `sudo -n` (shell.privileged), and `fab
setup`, which needs full root, wraps its commands with `as_root` (provision.AsRoot).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TypeVar

import paramiko
from fabric import Connection
from paramiko.ssh_exception import NoValidConnectionsError

from fpm_fleet.core.errors import ConfigError, ConnectError, RemoteError, RemoteResult
from fpm_fleet.core.inventory import Host
from fpm_fleet.remote import known_hosts
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.hostshell import WAKE_CHECK, HostShell, Reply, ShellLost, take_output
from fpm_fleet.remote.runner import ask_by_running
from fpm_fleet.remote.shell import KILL_AFTER, bounded
from fpm_fleet.streams import pump

T = TypeVar("T")

log = logging.getLogger("fpm_fleet.remote")
# paramiko logs a failed handshake with a traceback from its own thread; without a handler,
# Python would print it on stderr. output.start_log sends it to the run's log file.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"


def _host_keys(client: paramiko.SSHClient, host: Host,
               say: Callable[[str], None]) -> known_hosts.Policy:
    """Load known_hosts (the inventory's file, else the user's and the system's) and return
    the policy for a key it does not list."""
    user_file = os.path.expanduser(USER_KNOWN_HOSTS)
    if host.known_hosts:
        paths = [os.path.expanduser(host.known_hosts)]
        if not os.path.exists(paths[0]):
            raise ConfigError(f"{host.name}: known_hosts file {paths[0]} does not exist")
    else:
        paths = [p for p in (user_file, SYSTEM_KNOWN_HOSTS) if os.path.exists(p)]
    name = known_hosts.host_name(host.address, host.port)
    found = {path: known_hosts.parse(Path(path).read_text(errors="replace")) for path in paths}
    lines = [line for each in found.values() for line in each]
    revoked = known_hosts.revoked_keys(lines, name)
    known_hosts.load(client.get_host_keys(), lines, revoked)
    known = client.get_host_keys().lookup(name) is not None
    for path, each in found.items():
        known_hosts.check_markers(each, name, path, host.name, known)
    return known_hosts.Policy(host.trust_new_host_keys, revoked, paths[0] if host.known_hosts
                              else user_file, say)


def connect(host: Host, say: Callable[[str], None] | None = None) -> Connection:
    """Open an SSH connection to `host` with strict host-key checking and a connect timeout.

    Every way this fails is one ConnectError naming the host and the cause, never paramiko's
    own exception: see `connect_failure`. `say` hears of a new host key trusted and saved.
    """
    conn = Connection(host.address, user=host.user, port=host.port,
                      connect_kwargs=connect_kwargs(host, _identity(host)))
    conn.client.set_missing_host_key_policy(_host_keys(conn.client, host, say or log.warning))
    try:
        # Fabric hands its connect_kwargs to paramiko's connect(): ours is the socket to use
        conn.connect_kwargs["sock"] = dial(host)
        conn.open()
    except (paramiko.SSHException, OSError, EOFError) as exc:
        conn.close()
        raise ConnectError(f"{host.name} ({host.user}@{host.address}:{host.port}): "
                           f"{connect_failure(exc, host)}") from None
    _tune(conn)
    return conn


class QuickAckSocket(socket.socket):
    """A TCP socket that acknowledges what it receives at once.

    sshd leaves Nagle's algorithm on for a session without a terminal, so a small packet of
    its waits until the one before is acknowledged; the client's kernel delays that ack up
    to 40 ms when it has nothing to send back. Measured: every connection's first command
    took 40-45 ms longer, its channel confirmation held back behind the host-key message
    sshd sends after the login. TCP_QUICKACK is not permanent (the kernel goes back to
    delayed acks as it sees fit), so it is set again before each read: one system call,
    against a 40 ms stall."""

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return super().recv(bufsize, flags)


def dial(host: Host) -> socket.socket:
    """The TCP connection paramiko runs SSH over, bounded by connect_timeout; without
    delayed acks (QuickAckSocket) nor Nagle (small command and answer exchanges)."""
    plain = socket.create_connection((host.address, host.port), timeout=host.connect_timeout)
    if not hasattr(socket, "TCP_QUICKACK"):  # Linux only
        sock = plain
    else:
        sock = QuickAckSocket(plain.family, plain.type, plain.proto, plain.detach())
        sock.settimeout(host.connect_timeout)  # a socket made from a descriptor has none
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_kwargs(host: Host, key: paramiko.PKey | None) -> dict[str, object]:
    """paramiko's connect() arguments. `timeout` bounds the TCP connect and the whole SSH
    handshake; the banner deadline is set a little inside it, so that a port which accepts
    and stays silent fails as "no banner" rather than as a handshake cut off with no cause."""
    kwargs: dict[str, object] = {"timeout": host.connect_timeout,
                                 "banner_timeout": host.connect_timeout * BANNER_SHARE,
                                 "auth_timeout": host.connect_timeout}
    if host.identity_file:
        kwargs["look_for_keys"] = False
        if key is not None:
            kwargs["pkey"] = key
        else:
            kwargs["key_filename"] = [host.identity_file]
    return kwargs


def _identity(host: Host) -> paramiko.PKey | None:
    """The inventory's key, loaded here: given only the file, paramiko tries every key type
    in turn and a refused login surfaces as "encountered RSA key, expected OPENSSH key".
    A passphrase-protected key is left to paramiko and ssh-agent (None)."""
    if not host.identity_file:
        return None
    try:
        return paramiko.PKey.from_path(host.identity_file)
    except TypeError:  # cryptography's way of saying it needs a passphrase
        return None
    except (ValueError, OSError, paramiko.SSHException) as exc:
        raise ConfigError(f"{host.name}: identity_file {host.identity_file} is not a private "
                          f"key fpm-fleet can read: {exc}") from None


BANNER_SHARE = 0.9
KEEPALIVE = 15  # seconds between SSH keepalives on an idle connection
CLIENT_GRACE = KILL_AFTER + 5  # the host's `timeout` ends a command before the client does
HOST_TIMEOUT_CODES = (124, 128 + 9)  # timeout's own exit status, and after its SIGKILL

REFUSED, NO_ROUTE, NET_DOWN, TIMED_OUT = (errno.ECONNREFUSED, errno.EHOSTUNREACH,
                                          errno.ENETUNREACH, errno.ETIMEDOUT)


def connect_failure(exc: BaseException, host: Host) -> str:
    """Why a connection could not be opened, in the words an operator acts on (pure)."""
    if isinstance(exc, paramiko.BadHostKeyException):
        return ("host key changed: it does not match known_hosts (possible man-in-the-middle; "
                "if the host was reinstalled, replace its known_hosts entry); refusing to connect")
    if isinstance(exc, paramiko.AuthenticationException):
        key = f" with key {host.identity_file}" if host.identity_file else ""
        return f"authentication failed for user {host.user}{key}"
    if isinstance(exc, paramiko.SSHException):
        return _ssh_failure(str(exc), host)
    if isinstance(exc, NoValidConnectionsError):
        codes = {e.errno for e in exc.errors.values()}
        return _socket_failure(REFUSED if codes == {REFUSED} else NO_ROUTE, host)
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve address {host.address}: {exc.strerror}"
    if isinstance(exc, TimeoutError):
        return _socket_failure(TIMED_OUT, host)
    if isinstance(exc, OSError) and exc.errno is not None:
        return _socket_failure(exc.errno, host)
    return f"connection closed during the SSH handshake ({str(exc) or type(exc).__name__})"


def _socket_failure(code: int, host: Host) -> str:
    return {
        REFUSED: f"connection refused: nothing listens on port {host.port}",
        NO_ROUTE: "no route to host",
        NET_DOWN: "network unreachable",
        TIMED_OUT: f"timed out: no answer within {host.connect_timeout:g}s",
    }.get(code, f"unreachable: {os.strerror(code)}")


def _ssh_failure(text: str, host: Host) -> str:
    if text.startswith("host key revoked"):
        return text
    if "not found in known_hosts" in text:
        return ("unknown host key: add it to known_hosts (ssh-keyscan -p "
                f"{host.port} {host.address}) or set trust_new_host_keys = true")
    if "banner" in text:
        return (f"no SSH banner within {host.connect_timeout:g}s: the port accepts connections "
                "but no SSH server answers on it")
    if "No authentication methods" in text:
        return (f"authentication failed for user {host.user}: no key to offer "
                "(set identity_file, or load one in ssh-agent)")
    if "No existing session" in text or "Negotiation failed" in text:
        return f"SSH handshake did not finish within {host.connect_timeout:g}s"
    return f"SSH failed: {text}"


def _tune(conn: Connection) -> None:
    """Keepalives, so a dead host or a dropped NAT mapping ends the run instead of hanging
    it."""
    transport = conn.client.get_transport()
    if transport is not None:
        transport.set_keepalive(KEEPALIVE)


class SSHRunner:
    """The runner over one Fabric connection. Commands go through the connection's host
    shell (remote/hostshell.py: one channel for all of them), opened at the first command;
    uploads, and a command while another thread holds the shell, get an exec channel of
    their own (`host_shell=False`: every command does)."""

    def __init__(self, host: Host, conn: Connection, host_shell: bool = True) -> None:
        self.host = host
        self.conn = conn
        self.host_shell = host_shell
        self._shell: HostShell | None = None
        self._shell_lock = threading.Lock()

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        result = self._command(command, what, timeout)
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

    def _command(self, command: str, what: str, timeout: float | None) -> RemoteResult:
        if self.host_shell and self._shell_lock.acquire(blocking=False):
            try:
                return self._in_shell(command, what, timeout)
            finally:
                self._shell_lock.release()
        result, _ = self._exec(command, what, None, timeout)
        return result

    def _transport(self, what: str) -> paramiko.Transport:
        transport = self.conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise ConnectError(f"{self.host.name}: connection lost before {what}")
        return transport

    def _in_shell(self, command: str, what: str, timeout: float | None) -> RemoteResult:
        """`command` through the host shell, bounded on the host as in an exec channel. A
        shell that timed out, ended or broke is closed; the next command opens another."""
        transport = self._transport(what)
        limit = timeout or self.host.command_timeout
        started = time.monotonic()
        try:
            if self._shell is None:
                self._shell = HostShell.open(transport, self.host.connect_timeout)
            reply = self._shell.run(command, limit, time.monotonic() + limit + CLIENT_GRACE)
        except ShellLost as exc:
            self._drop_shell()
            if not transport.is_active():
                raise ConnectError(f"{self.host.name}: connection lost during {what}") from None
            reply = Reply("", str(exc), -1)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self._drop_shell()
            raise ConnectError(f"{self.host.name}: connection lost during {what}: "
                               f"{exc or type(exc).__name__}") from None
        except BaseException:  # an interrupt mid-command: the reply would come later
            self._drop_shell()
            raise
        if reply is None:  # the client's deadline, after the host's own
            self._drop_shell()
            reply = Reply("", "timed out", 124)
        return self._result(command, what, reply.exited, reply.stdout, reply.stderr, limit,
                            started)

    def _drop_shell(self) -> None:
        if self._shell is not None:
            self._shell.close()
            self._shell = None

    def _exec(self, command: str, what: str, source: IO[bytes] | None,
              timeout: float | None) -> tuple[RemoteResult, int]:
        """One exec channel on the Fabric connection's transport (Fabric's own `run` adds
        threads and a 10 ms input poll per command)."""
        transport = self._transport(what)
        limit = timeout or self.host.command_timeout
        # bounded on the host, as the login user (hooks included); an upload is not bounded
        # (it ends with its input, however long that takes). The few root commands run
        # through `sudo -n` inside it, where a timeout's signal reaches them: sudo does not
        # pass on a signal sent by its own process group, so `timeout` never wraps sudo.
        full = bounded(command, limit) if source is None else command
        started = time.monotonic()
        sent = 0
        try:
            chan = transport.open_session(timeout=self.host.connect_timeout)
            try:
                chan.settimeout(limit)
                chan.exec_command(full)
                if source is not None:
                    sent = pump(source, chan.sendall)
                chan.shutdown_write()
                # the deadline starts once the input is sent: a long upload is no timeout;
                # the host's own bound fires first, this one is for a connection that hangs
                stdout, stderr, code = _drain(chan, time.monotonic() + limit + CLIENT_GRACE)
            finally:
                chan.close()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"{self.host.name}: connection lost during {what}: "
                               f"{exc or type(exc).__name__}") from None
        return self._result(command, what, code, stdout, stderr,
                            limit if source is None else None, started), sent

    def _result(self, command: str, what: str, code: int, stdout: str, stderr: str,
                bound: float | None, started: float) -> RemoteResult:
        """The logged result (`bound`: the host's timeout, None for an upload)."""
        if bound is not None and code in HOST_TIMEOUT_CODES:
            stderr += f"\ntimed out on the host after {bound:g}s (command_timeout)"
        result = RemoteResult(command, code, stdout, stderr)
        _log(self.host.name, what, result, time.monotonic() - started, bound is None)
        return result

    def ask(self, cmd: Command[T]) -> T:
        return ask_by_running(self, cmd)

    def close(self) -> None:
        self._drop_shell()
        self.conn.close()


def _drain(chan: paramiko.Channel, deadline: float) -> tuple[str, str, int]:
    """Read stdout and stderr until the command exits; exit 124 on timeout.

    The thread sleeps in select() on the channel's pipe, which paramiko sets when output,
    EOF or the close arrives: it wakes once per arrival, not every millisecond (a 1 ms poll
    cost each host's thread a wake-up a millisecond for the whole rollout)."""
    out, err = bytearray(), bytearray()
    wake = chan.fileno()
    while True:
        take_output(chan, out, err)
        if chan.eof_received or chan.closed:
            take_output(chan, out, err)  # what came with the EOF
            # sshd may send exit-status after the EOF: wait for it (set on close too)
            if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
                return out.decode(errors="replace"), "timed out", 124
            code = chan.recv_exit_status()  # -1: closed without one
            if code < 0 and not _alive(chan):
                raise EOFError("the connection closed before the command finished")
            return out.decode(errors="replace"), err.decode(errors="replace"), code
        left = deadline - time.monotonic()
        if left <= 0:
            return out.decode(errors="replace"), "timed out", 124
        select.select([wake], [], [], min(left, WAKE_CHECK))


def _alive(chan: paramiko.Channel) -> bool:
    transport = chan.get_transport()
    return transport is not None and transport.is_active()


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
def session(host: Host) -> Iterator[SSHRunner]:
    """A runner for the duration of a block; the connection is always closed."""
    runner = SSHRunner(host, connect(host))
    try:
        yield runner
    finally:
        runner.close()


def session_opened(runner: SSHRunner) -> SSHRunner:
    """`runner` once the host opened its login session: sshd does that (PAM, logind) for the
    first command of a connection, so a connection opened ahead (remote/ahead.py) runs
    `true` to have it done by then. Closed, with the error raised, if that fails."""
    try:
        runner.run("true", "open the login session")
    except BaseException:
        runner.close()
        raise
    return runner


def early_runner(host: Host) -> SSHRunner:
    """A connection opened at start-up, before the task's own output exists: a new host key
    trusted on the way is said on stderr (and in the log), as it happens."""
    def say(message: str) -> None:
        log.warning("[%s] host key: %s", host.name, message)
        sys.stderr.write(f"warning: {host.name}: {message}\n")

    return session_opened(SSHRunner(host, connect(host, say)))
