"""fpm_fleet.remote.ssh.connect: every way a connection fails is one ConnectError naming the host
and
the cause. The servers are real and local: a port nothing listens on, a TCP server that
accepts and stays silent, and paramiko's own SSH server (which refuses every login)."""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import io
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import paramiko
import pytest
from paramiko.ssh_exception import NoValidConnectionsError

from fpm_fleet.core import inventory
from fpm_fleet.core.errors import ConfigError, ConnectError
from fpm_fleet.core.inventory import Host
from fpm_fleet.remote import known_hosts, shell
from fpm_fleet.remote import ssh as remote


def local_host(port: int, **changes: object) -> Host:
    fleet = inventory.parse({"hosts": [{"name": "web1", "address": "127.0.0.1", "port": port,
                                        "connect_timeout": 1}],
                             "pools": {"www": {"replicas": 2}}})
    return replace(fleet.hosts[0], **changes)  # type: ignore[arg-type]


def failure(host: Host) -> str:
    with pytest.raises(ConnectError) as info:
        remote.connect(host)
    assert info.value.exit_code == 3
    message = str(info.value)
    assert message.startswith(f"web1 (root@127.0.0.1:{host.port}): "), message
    assert "\n" not in message
    return message.split(": ", 1)[1]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port that is bound but not listening: the kernel refuses at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP server that accepts and never says a word (a wrong port, a wedged sshd)."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()
    for conn in accepted:
        conn.close()


class RefuseEveryLogin(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "publickey"


@dataclass
class SSHServer:
    port: int
    key: paramiko.PKey

    def known_hosts_line(self, key: paramiko.PKey | None = None) -> str:
        key = key or self.key
        return f"[127.0.0.1]:{self.port} {key.get_name()} {key.get_base64()}\n"


@pytest.fixture
def ssh_server() -> Iterator[SSHServer]:
    """paramiko's SSH server on 127.0.0.1 with its own host key; every login is refused."""
    key = paramiko.ECDSAKey.generate()
    server = socket.create_server(("127.0.0.1", 0))
    transports: list[paramiko.Transport] = []

    def serve() -> None:
        while True:
            try:
                conn = server.accept()[0]
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(key)
            transports.append(t)
            # the client hung up first, or the teardown closed the transport mid-read
            with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
                t.start_server(server=RefuseEveryLogin())

    threading.Thread(target=serve, daemon=True).start()
    yield SSHServer(server.getsockname()[1], key)
    server.close()
    for t in transports:
        t.close()


@pytest.fixture
def client_key(tmp_path: Path) -> str:
    path = tmp_path / "id_rsa"
    paramiko.RSAKey.generate(2048).write_private_key_file(str(path))
    return str(path)


def test_a_closed_port_is_connection_refused(closed_port):
    assert failure(local_host(closed_port)) == (
        f"connection refused: nothing listens on port {closed_port}")


def test_a_silent_port_is_no_ssh_banner_within_the_connect_timeout(silent_port):
    started = time.monotonic()
    cause = failure(local_host(silent_port))
    assert cause.startswith("no SSH banner within 1s")
    assert time.monotonic() - started < 2.5  # bounded by connect_timeout, not paramiko's 15 s


def test_an_unknown_host_key_is_refused_with_how_to_add_it(ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    known.write_text("")
    cause = failure(local_host(ssh_server.port, known_hosts=str(known),
                               identity_file=client_key))
    assert cause.startswith("unknown host key: add it to known_hosts "
                            f"(ssh-keyscan -p {ssh_server.port} 127.0.0.1)")


def test_a_changed_host_key_is_refused_as_changed(ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    known.write_text(ssh_server.known_hosts_line(paramiko.ECDSAKey.generate()))
    cause = failure(local_host(ssh_server.port, known_hosts=str(known),
                               identity_file=client_key))
    assert cause.startswith("host key changed: it does not match known_hosts")


def test_a_refused_login_is_authentication_failed_naming_user_and_key(
        ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    known.write_text(ssh_server.known_hosts_line())
    cause = failure(local_host(ssh_server.port, known_hosts=str(known),
                               identity_file=client_key))
    assert cause == f"authentication failed for user root with key {client_key}"


def test_the_socket_ssh_runs_over_sends_at_once_and_acknowledges_at_once():
    """No Nagle from the first packet (the handshake's back-to-back messages), and
    TCP_QUICKACK set again before every read: sshd's Nagle otherwise holds a small packet
    until our delayed ack, 40 ms at each connection's first command (measured)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        sock = remote.dial(local_host(server.getsockname()[1]))
        peer = server.accept()[0]
        with sock, peer:
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.gettimeout() == 1  # connect_timeout, until paramiko sets its own
            for _ in range(3):
                # a reply after a read is what turns delayed acks back on
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
                peer.sendall(b"x")
                assert sock.recv(1) == b"x"
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK) == 1
                sock.sendall(b"y")
                assert peer.recv(1) == b"y"


# --- causes that a local test cannot produce for real: the classification alone ------------

HOST = local_host(2222)


@pytest.mark.parametrize(("exc", "cause"), [
    (NoValidConnectionsError({("198.18.0.9", 22): OSError(errno.EHOSTUNREACH, "x")}),
     "no route to host"),
    (NoValidConnectionsError({("198.18.0.9", 22): OSError(errno.ECONNREFUSED, "x")}),
     "connection refused: nothing listens on port 2222"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
    (TimeoutError("timed out"), "timed out: no answer within 1s"),
    (OSError(errno.ETIMEDOUT, "Connection timed out"), "timed out: no answer within 1s"),
    (socket.gaierror(-2, "Name or service not known"),
     "cannot resolve address 127.0.0.1: Name or service not known"),
    (paramiko.SSHException("No existing session"), "SSH handshake did not finish within 1s"),
    (EOFError(), "connection closed during the SSH handshake (EOFError)"),
])
def test_network_failures_are_named_by_their_cause(exc, cause):
    assert remote.connect_failure(exc, HOST) == cause


def test_a_file_that_is_no_private_key_is_refused_naming_it(tmp_path):
    path = tmp_path / "id_rsa.pub"
    path.write_text("ssh-rsa AAAA not a private key\n")
    with pytest.raises(ConfigError) as info:
        remote.connect(local_host(22, identity_file=str(path)))
    assert str(info.value).startswith(f"web1: identity_file {path} is not a private key ")


def test_the_banner_deadline_falls_inside_the_connect_timeout():
    kwargs = remote.connect_kwargs(local_host(22, connect_timeout=4.0), None)
    assert kwargs["timeout"] == kwargs["auth_timeout"] == 4.0
    assert 0 < kwargs["banner_timeout"] < 4.0  # type: ignore[operator]


# --- known_hosts: new keys saved, @revoked honoured, @cert-authority refused clearly --------

def connect_to(server: SSHServer, known: Path, client_key: str, trust: bool = False,
               said: list[str] | None = None) -> Exception:
    host = local_host(server.port, known_hosts=str(known), identity_file=client_key,
                      trust_new_host_keys=trust)
    with pytest.raises((ConnectError, ConfigError)) as info:
        remote.connect(host, said.append if said is not None else None)
    return info.value


def test_a_trusted_new_key_is_saved_to_known_hosts_keeping_its_comments_and_said(
        ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    other = f"other.example {ssh_server.key.get_name()} {paramiko.ECDSAKey.generate().get_base64()}"
    known.write_text(f"# pinned by ops, do not edit\n{other}")  # no final newline
    said: list[str] = []
    error = connect_to(ssh_server, known, client_key, trust=True, said=said)
    assert "authentication failed" in str(error)  # the key was accepted, the login refused
    assert known.read_text() == ("# pinned by ops, do not edit\n" + other + "\n"
                                 + ssh_server.known_hosts_line())
    assert said == [f"trusted the new host key of [127.0.0.1]:{ssh_server.port} "
                    f"({ssh_server.key.get_name()} {ssh_server.key.fingerprint}) "
                    f"and saved it to {known}"]
    again = connect_to(ssh_server, known, client_key)  # no longer trusting: now known
    assert "authentication failed" in str(again)


def test_a_revoked_key_is_refused_even_when_trusting_new_keys(ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    known.write_text("@revoked * " + ssh_server.known_hosts_line().split(" ", 1)[1])
    error = connect_to(ssh_server, known, client_key, trust=True)
    assert isinstance(error, ConnectError)
    assert "host key revoked" in str(error) and "refusing to connect" in str(error)
    assert known.read_text().count("\n") == 1, "a revoked key is never saved"


def test_a_revoked_key_is_refused_even_when_also_listed(ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    line = ssh_server.known_hosts_line()
    known.write_text(line + "@revoked * " + line.split(" ", 1)[1])
    assert "host key revoked" in str(connect_to(ssh_server, known, client_key))


def test_a_cert_authority_entry_for_the_host_is_refused_with_a_clear_message(
        ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    ca = paramiko.ECDSAKey.generate()
    known.write_text(f"# CA\n@cert-authority [127.0.0.1]:* {ca.get_name()} {ca.get_base64()}\n")
    error = connect_to(ssh_server, known, client_key)
    assert isinstance(error, ConfigError)
    assert str(error) == (f"web1: {known} line 2: @cert-authority entry for "
                          f"[127.0.0.1]:{ssh_server.port}: fpm-fleet (paramiko) cannot check "
                          "host certificates; add the host's own key to known_hosts")


def test_markers_for_other_hosts_do_not_get_in_the_way(ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    ca = paramiko.ECDSAKey.generate()
    known.write_text(f"@cert-authority *.example.com {ca.get_name()} {ca.get_base64()}\n"
                     f"@revoked old.example {ca.get_name()} {ca.get_base64()}\n"
                     "garbage line\n" + ssh_server.known_hosts_line())
    assert "authentication failed" in str(connect_to(ssh_server, known, client_key))


def test_hashed_and_negated_patterns_match_as_openssh_does():
    salt = b"0123456789abcdef0123"
    digest = hmac.new(salt, b"web1.example", hashlib.sha1).digest()
    hashed = f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"
    lines = known_hosts.parse(f"@revoked {hashed} ssh-ed25519 AAAA\n"
                              "@revoked *.example,!web2.example ssh-ed25519 BBBB\n")
    assert known_hosts.revoked_keys(lines, "web1.example") == {("ssh-ed25519", "AAAA"),
                                                               ("ssh-ed25519", "BBBB")}
    assert known_hosts.revoked_keys(lines, "web2.example") == set()


# --- deadlines: after the input is sent, and on the host too ---------------------------------

class SlowChannel:
    """An exec channel whose input takes `send_seconds` to go out; the command then runs
    `run_seconds` and exits 0 (with the command line it was given recorded). As paramiko's,
    its pipe turns readable and its status event is set when the command's EOF and exit
    status arrive."""

    def __init__(self, send_seconds: float, run_seconds: float, code: int = 0) -> None:
        self.send_seconds, self.run_seconds, self.code = send_seconds, run_seconds, code
        self.command = ""
        self.done_at = float("inf")
        self.closed = False
        self.status_event = threading.Event()
        self._pipe = os.pipe()
        self.checks = 0  # how often the reader looked for output

    def fileno(self) -> int:
        return self._pipe[0]

    def _exited(self) -> None:
        os.write(self._pipe[1], b"x")
        self.status_event.set()

    def settimeout(self, seconds: float) -> None:
        pass

    def exec_command(self, command: str) -> None:
        self.command = command

    def sendall(self, chunk: bytes) -> None:
        time.sleep(self.send_seconds)

    def shutdown_write(self) -> None:
        self.done_at = time.monotonic() + self.run_seconds
        threading.Timer(self.run_seconds, self._exited).start()

    def recv_ready(self) -> bool:
        self.checks += 1
        return False

    recv_stderr_ready = recv_ready

    @property
    def eof_received(self) -> bool:
        return time.monotonic() >= self.done_at

    def exit_status_ready(self) -> bool:
        return self.eof_received

    def recv_exit_status(self) -> int:
        return self.code

    def close(self) -> None:
        self.closed = True
        for fd in self._pipe:
            os.close(fd)


class FakeTransport:
    def __init__(self, chan: SlowChannel) -> None:
        self.chan = chan
        self.keepalive = 0

    def is_active(self) -> bool:
        return True

    def open_session(self, timeout: float) -> SlowChannel:
        return self.chan

    def set_keepalive(self, seconds: int) -> None:
        self.keepalive = seconds


class FakeConnection:
    def __init__(self, transport: FakeTransport) -> None:
        self.client = self
        self.transport = transport

    def get_transport(self) -> FakeTransport:
        return self.transport


def ssh_runner(chan: SlowChannel, **host: object) -> remote.SSHRunner:
    """A runner whose commands each get an exec channel (the host shell has tests of its
    own, test_hostshell.py)."""
    return remote.SSHRunner(local_host(22, **host),
                            FakeConnection(FakeTransport(chan)),  # type: ignore[arg-type]
                            host_shell=False)


def test_a_long_upload_is_no_timeout_the_deadline_starts_once_the_input_is_sent():
    chan = SlowChannel(send_seconds=0.3, run_seconds=0.05)
    ex = ssh_runner(chan)
    result, sent = ex.stream("tar -x", "upload", io.BytesIO(b"x" * 10), timeout=0.1)
    assert result.exited == 0 and sent == 10
    assert chan.command == "tar -x", "an upload is bounded by its input, not by `timeout`"


def test_commands_are_bounded_on_the_host_by_their_timeout():
    chan = SlowChannel(send_seconds=0, run_seconds=0)
    ssh_runner(chan, sudo=True).run("sudo -n -- systemctl start x", "start", timeout=42)
    # as the login user; the one root command inside gets the signal (sudo is not wrapped)
    assert chan.command == "timeout -k 5 42 sh -c 'sudo -n -- systemctl start x'"


def test_waiting_for_a_command_sleeps_until_it_answers_instead_of_polling():
    """Six hosts' threads wait on their commands for the whole rollout: each looks for output
    when the channel says something arrived, not every millisecond."""
    chan = SlowChannel(send_seconds=0, run_seconds=0.3)
    result = ssh_runner(chan).run("sleep 0.3", "wait")
    assert result.exited == 0
    assert chan.checks < 20, f"looked {chan.checks} times in 0.3 s"


def test_a_command_over_its_timeout_is_ended_on_the_host(sh):
    result = sh(shell.bounded("sleep 5; echo never", 0.2))
    assert result.returncode == 124 and "never" not in result.stdout


def test_a_command_ended_by_the_host_bound_says_so():
    ex = ssh_runner(SlowChannel(send_seconds=0, run_seconds=0, code=124))
    result = ex.run("sh -c 'sleep 600'", "before_activate", check=False, timeout=30)
    assert result.stderr.endswith("timed out on the host after 30s (command_timeout)")


def test_the_host_bound_ends_a_hooks_children_too(sh, tmp_path):
    started = time.monotonic()
    sh(shell.bounded("(sleep 3; touch late) & sleep 3", 0.3))
    time.sleep(3.2 - (time.monotonic() - started))
    assert not (tmp_path / "late").exists()


def test_keepalives_are_on():
    transport = FakeTransport(SlowChannel(0, 0))
    remote._tune(FakeConnection(transport))  # type: ignore[arg-type]
    assert transport.keepalive == remote.KEEPALIVE > 0


def test_a_cert_authority_for_every_host_is_fine_where_the_hosts_own_key_is_listed(
        ssh_server, tmp_path, client_key):
    known = tmp_path / "known_hosts"
    ca = paramiko.ECDSAKey.generate()
    known.write_text(f"@cert-authority * {ca.get_name()} {ca.get_base64()}\n"
                     + ssh_server.known_hosts_line())
    assert "authentication failed" in str(connect_to(ssh_server, known, client_key))
