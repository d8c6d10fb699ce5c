"""The host shell: its framing, and the real loop script (templates/sh/command-loop.sh) run
by a local `sh` behind a stand-in for paramiko's channel."""

from __future__ import annotations

import os
import select
import subprocess
import threading
import time

import pytest
from test_remote import local_host

from fpm_fleet.remote import hostshell
from fpm_fleet.remote import ssh as remote
from fpm_fleet.remote.hostshell import HostShell, Reply, ShellLost, frame, split_reply

TOKEN = b"fpm-fleet-0123456789abcdef"


# --- framing ---------------------------------------------------------------------------------

def test_a_frame_is_the_header_line_then_the_text_in_bytes():
    assert frame("echo é\n", 30) == b"8 30 5\necho \xc3\xa9\n"
    assert frame("", 1.5, kill_after=2) == b"0 1.5 2\n"


def test_a_reply_is_what_comes_before_both_marks():
    reply = split_reply(b"a\nb" + TOKEN + b" 3\n", b"oops\n" + TOKEN + b"\n", TOKEN)
    assert reply == Reply("a\nb", "oops\n", 3)


@pytest.mark.parametrize("out, err", [
    (b"a\n", b""),                          # nothing ended yet
    (b"a" + TOKEN + b" 0\n", b"late"),      # stderr not ended
    (b"a" + TOKEN + b" 0", TOKEN + b"\n"),  # the status line cut short
])
def test_no_reply_until_both_marks_are_whole(out, err):
    assert split_reply(out, err, TOKEN) is None


def test_anything_after_a_mark_is_out_of_protocol():
    with pytest.raises(ShellLost, match="out of protocol"):
        split_reply(TOKEN + b" 0\nstray\n", TOKEN + b"\n", TOKEN)
    with pytest.raises(ShellLost, match="out of protocol"):
        split_reply(TOKEN + b" x\n", TOKEN + b"\n", TOKEN)


# --- the loop, run by a local sh -------------------------------------------------------------

class LoopChannel:
    """What HostShell uses of a paramiko channel, over a local process: the command it
    execs runs under `sh -c`; a thread per output pipe fills the buffers and, as paramiko
    does, makes the channel's pipe readable when output or EOF arrives."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.out, self.err = bytearray(), bytearray()
        self.eof_received = self.closed = False
        self._wake_r, self._wake_w = os.pipe()
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    def exec_command(self, command: str) -> None:
        self.proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [threading.Thread(target=self._pump, args=(self.proc.stdout, self.out)),
                         threading.Thread(target=self._pump, args=(self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def _pump(self, pipe: object, buf: bytearray) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        while chunk := os.read(fd, 65536):
            with self._lock:
                buf += chunk
            os.write(self._wake_w, b"x")
        with self._lock:
            self.eof_received = True
        os.write(self._wake_w, b"x")

    def sendall(self, data: bytes) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def fileno(self) -> int:
        return self._wake_r

    def _take(self, buf: bytearray, n: int) -> bytes:
        # the wake-ups so far, then the buffer: output arriving after this wakes again
        if select.select([self._wake_r], [], [], 0)[0]:
            os.read(self._wake_r, 65536)
        with self._lock:
            chunk = bytes(buf[:n])
            del buf[:n]
        return chunk

    def recv_ready(self) -> bool:
        return bool(self.out)

    def recv(self, n: int) -> bytes:
        return self._take(self.out, n)

    def recv_stderr_ready(self) -> bool:
        return bool(self.err)

    def recv_stderr(self, n: int) -> bytes:
        return self._take(self.err, n)

    def close(self) -> None:
        if self.proc is not None and not self.closed:
            self.closed = True
            self.proc.kill()
            self.proc.wait()
            for reader in self._readers:
                reader.join()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()
            os.close(self._wake_r)
            os.close(self._wake_w)


class LoopTransport:
    """Opens LoopChannels and counts them."""

    def __init__(self) -> None:
        self.opened: list[LoopChannel] = []

    def open_session(self, timeout: float) -> LoopChannel:
        self.opened.append(LoopChannel())
        return self.opened[-1]

    def is_active(self) -> bool:
        return True


@pytest.fixture
def shell():
    transport = LoopTransport()
    opened = HostShell.open(transport, timeout=5)  # type: ignore[arg-type]
    yield opened
    opened.close()


def run(shell: HostShell, command: str, seconds: float = 10) -> Reply:
    reply = shell.run(command, seconds, time.monotonic() + seconds + 10)
    assert reply is not None
    return reply


def test_commands_run_one_after_another_with_their_own_output_and_status(shell):
    assert run(shell, "echo one; echo err >&2; exit 3") == Reply("one\n", "err\n", 3)
    assert run(shell, "printf 'no newline'") == Reply("no newline", "", 0)
    assert run(shell, "printf 'kept\\n\\n\\n'").stdout == "kept\n\n\n"
    assert run(shell, "printf '%s' \"$1\" | wc -c; cat").stdout == "0\n", "stdin is empty"


def test_the_text_reaches_sh_as_is(shell):
    text = "printf '%s\\n' 'a b' \"$HOME\" '$HOME' 'é' \"it's\"\n\n"
    assert run(shell, text).stdout == f"a b\n{os.environ['HOME']}\n$HOME\né\nit's\n"


def test_nothing_of_a_command_outlives_it(shell):
    mask = os.umask(0)
    os.umask(mask)
    run(shell, "cd /; X=1; export Y=2; umask 077")
    after = run(shell, "pwd; echo \"${X:-unset} ${Y:-unset}\"; umask").stdout.split()
    assert after == [os.getcwd(), "unset", "unset", f"{mask:04o}"]


def test_a_command_over_its_seconds_is_ended_on_the_host(shell):
    started = time.monotonic()
    assert run(shell, "sleep 5; echo never", seconds=0.3) == Reply("", "", 124)
    assert time.monotonic() - started < 3
    assert run(shell, "echo next").stdout == "next\n", "the loop goes on"


def test_the_token_is_in_no_process_s_arguments(shell):
    listing = run(shell, "ps -eo args").stdout
    assert shell.token.decode() not in listing
    assert "read -r token" in listing, "the loop itself is listed"


def test_a_mark_with_another_token_is_output(shell):
    other = "fpm-fleet-" + "f" * 32
    assert run(shell, f"echo '{other} 0'; echo '{other}' >&2") == Reply(
        f"{other} 0\n", f"{other}\n", 0)


def test_a_shell_that_ends_mid_command_is_lost(shell):
    proc = shell.chan.proc
    threading.Timer(0.3, proc.kill).start()
    with pytest.raises(ShellLost, match="ended before"):
        shell.run("sleep 5", 10, time.monotonic() + 20)


def test_the_client_s_deadline_returns_none(shell):
    assert shell.run("sleep 2", 10, time.monotonic() + 0.2) is None


# --- the runner over it ----------------------------------------------------------------------

class LoopConnection:
    def __init__(self) -> None:
        self.client = self
        self.transport = LoopTransport()

    def get_transport(self) -> LoopTransport:
        return self.transport

    def close(self) -> None:
        for chan in self.transport.opened:
            chan.close()


@pytest.fixture
def runner():
    conn = LoopConnection()
    made = remote.SSHRunner(local_host(22), conn)  # type: ignore[arg-type]
    yield made
    made.close()


def test_a_runner_sends_every_command_through_one_channel(runner):
    for n in range(5):
        assert runner.run(f"echo {n}", "echo").stdout == f"{n}\n"
    assert runner.run("exit 7", "fail", check=False).exited == 7
    assert len(runner.conn.transport.opened) == 1


def test_a_runner_says_when_the_host_bound_ended_a_command(runner):
    result = runner.run("sleep 5", "slow", check=False, timeout=0.3)
    assert result.exited == 124
    assert result.stderr.endswith("timed out on the host after 0.3s (command_timeout)")


def test_a_lost_shell_fails_its_command_and_the_next_gets_a_new_one(runner):
    runner.run("true", "open")
    first = runner.conn.transport.opened[0]
    threading.Timer(0.3, first.proc.kill).start()
    lost = runner.run("sleep 5", "lost", check=False)
    assert lost.exited == -1 and "host shell ended" in lost.stderr
    assert runner.run("echo again", "again").stdout == "again\n"
    assert len(runner.conn.transport.opened) == 2


def test_a_command_while_another_thread_holds_the_shell_gets_its_own_channel(runner,
                                                                            monkeypatch):
    runner.run("true", "open")
    execs: list[str] = []
    monkeypatch.setattr(runner, "_exec", lambda command, what, source, timeout: (
        execs.append(command) or (remote.RemoteResult(command, 0, "", ""), 0)))
    with runner._shell_lock:
        runner.run("echo aside", "aside")
    assert execs == ["echo aside"]


def test_the_loop_script_is_sent_without_its_comments():
    text = hostshell.loop_command()
    assert text.startswith("exec sh -c '") and "# " not in text
