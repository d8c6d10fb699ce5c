"""The host shell: one SSH channel per connection that runs all of its commands.

A command in an exec channel of its own costs the host an sshd session process and a login
shell (bash, reading its startup files) before the command's own `timeout` and `sh` start.
Measured on a fleet host: 5.5-6.0 ms a command, 6.3-6.5 ms of CPU (the client's 1.5-1.7);
through one long-lived channel, 3.2-3.3 ms and 3.5-3.7 ms (the client's 0.3-0.5). A rollout
runs about fourteen commands a host, nine of them before the flip.

The channel runs templates/sh/command-loop.sh: per command a header line and the text go
in, the command runs as it would in a channel of its own (`timeout -k KILL SECONDS sh -c
TEXT`, stdin empty), and a token the client drew marks the end of its stdout (with the exit
status) and of its stderr. Uploads (`stream`) keep their own channels: their input is
streamed until its end, which the loop could not tell from the next command.

The framing is pure (`frame`, `split_reply`); `HostShell` drives a paramiko channel.
"""

from __future__ import annotations

import secrets
import select
import time
from dataclasses import dataclass

import paramiko

from fpm_fleet.remote.shell import KILL_AFTER, q, script

LOOP = "command-loop.sh"
WAKE_CHECK = 1.0  # seconds: select() also returns this often, whatever the pipe says


@dataclass(frozen=True)
class Reply:
    stdout: str
    stderr: str
    exited: int


class ShellLost(Exception):
    """The channel ended, or answered out of protocol, before a command's reply was in: the
    command's outcome is unknown, and the channel is not used again."""


def loop_command() -> str:
    """What the channel execs (through the login shell, which it then replaces)."""
    return f"exec sh -c {q(script(LOOP))}"


def frame(command: str, seconds: float, kill_after: int = KILL_AFTER) -> bytes:
    """One command as the loop reads it: its header line, then its text."""
    text = command.encode()
    return f"{len(text)} {seconds:g} {kill_after}\n".encode() + text


def split_reply(out: bytes, err: bytes, token: bytes) -> Reply | None:
    """The command's reply once both of its end marks are in (None: not yet). Raises
    ShellLost for anything after a mark: the loop writes nothing until the next command."""
    mark = out.find(token + b" ")
    if mark < 0 or not out.endswith(b"\n") or not err.endswith(token + b"\n"):
        return None
    status = out[mark + len(token) + 1:-1]
    if not status.isdigit() or err.find(token) != len(err) - len(token) - 1:
        raise ShellLost(f"the host shell answered out of protocol: {out[mark:]!r}")
    return Reply(out[:mark].decode(errors="replace"),
                 err[:-len(token) - 1].decode(errors="replace"), int(status))


def take_output(chan: paramiko.Channel, out: bytearray, err: bytearray) -> None:
    """Append what the channel holds of stdout and stderr, without waiting."""
    while chan.recv_ready():
        out += chan.recv(65536)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)


class HostShell:
    """The loop running in one channel of a connection; one command at a time."""

    def __init__(self, chan: paramiko.Channel, token: bytes) -> None:
        self.chan, self.token = chan, token

    @classmethod
    def open(cls, transport: paramiko.Transport, timeout: float) -> HostShell:
        chan = transport.open_session(timeout=timeout)
        try:
            chan.exec_command(loop_command())
            token = b"fpm-fleet-" + secrets.token_hex(16).encode()
            chan.sendall(token + b"\n")
        except BaseException:
            chan.close()
            raise
        return cls(chan, token)

    def run(self, command: str, seconds: float, deadline: float) -> Reply | None:
        """The command's reply; None once `deadline` (a time.monotonic() value) passed
        without it. Raises ShellLost when the channel ends first."""
        self.chan.sendall(frame(command, seconds))
        out, err = bytearray(), bytearray()
        wake = self.chan.fileno()
        while True:
            ended = self.chan.eof_received or self.chan.closed  # before the last read
            take_output(self.chan, out, err)
            reply = split_reply(bytes(out), bytes(err), self.token)
            if reply is not None:
                return reply
            if ended:
                raise ShellLost("the host shell ended before the command's reply")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            select.select([wake], [], [], min(left, WAKE_CHECK))

    def close(self) -> None:
        self.chan.close()
