"""templates/sh: the shell scripts run for real in a tmp dir. replica-lib.sh on a fake process
table; the stop script on real stand-in workers (processes titled as a replica's workers,
left by no master), as systemd runs it after a master died."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path, PurePosixPath

import pytest

from fpm_fleet import render
from fpm_fleet.core.resources import SHELL_SCRIPTS
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote import shell

STOP_SCRIPT = SHELL_SCRIPTS / "replica-stop.sh"


# --- replica-lib.sh: one definition of a replica's workers outside its master ------------------

WORKER = "php-fpm: pool www-1"


def count(fake_systemd, master: str, title: str = WORKER) -> str:
    command = shell.with_replica_lib(f"count_workers_outside {master} {shell.q(title)}")
    result = fake_systemd.run(command)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_workers_of_another_parent_count_those_of_the_live_master_do_not(fake_systemd):
    fake_systemd.processes((500, WORKER), (500, WORKER), (1, WORKER), (1, WORKER))
    assert count(fake_systemd, "500") == "2"


def test_only_the_exact_title_counts_not_another_pool_or_a_command_naming_it(fake_systemd):
    fake_systemd.processes((1, "php-fpm: pool www-11"), (1, "php-fpm: pool www-2"),
                           (1, f"vim {WORKER}"), (1, f"{WORKER} x"), (1, WORKER + "  "))
    assert count(fake_systemd, "500") == "1"  # only the padded title is that replica's


def test_without_a_master_every_worker_is_outside_it(fake_systemd):
    fake_systemd.processes((1, WORKER), (700, WORKER), (700, "php-fpm: master process (x)"))
    assert count(fake_systemd, "-") == "2"


def test_an_empty_process_table_counts_zero(fake_systemd):
    fake_systemd.processes()
    assert count(fake_systemd, "-") == "0"


def test_workers_outside_prints_their_pids_one_a_line(fake_systemd):
    fake_systemd.processes((1, WORKER), (500, WORKER), (1, WORKER))
    result = fake_systemd.run(shell.with_replica_lib(f"workers_outside 500 {shell.q(WORKER)}"))
    assert result.stdout.split() == ["90001", "90003"]  # the fake table's made-up pids


def test_the_probe_the_stop_and_the_connection_count_send_the_same_library():
    lib = shell.script(shell.REPLICA_LIB) + "\n"
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert fpm.PROBE_FUNCTION.startswith(lib)
    assert fpm.probe_command(layout, [1]).startswith(lib)
    assert fpm.stop_command(layout, 1, sudo=True).startswith(lib)
    assert fpm.connections_command(layout.sock(1)).startswith(lib)
    assert fpm.start_set_command(layout, [3], "v2", sudo=True).startswith(lib)


def test_mount_roots_reads_each_process_mount_and_says_dash_for_none_or_no_process(sh):
    # this shell's own root mount, twice around a pid that is gone (it ends nothing: mawk
    # stops at a missing file named on its command line), a pid file that named none
    command = shell.with_replica_lib('mount_roots / $$ 999999999 $$ -; '
                                     'echo "[$(mount_roots /no/such/point $$)]"')
    result = sh(command)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["/", "-", "/", "-", "[-]"]


def test_mount_roots_compares_the_point_as_mountinfo_escapes_it(sh, tmp_path):
    """A mount point with a space is written `\\040` in mountinfo: compared as is, never
    unescaped on the way (awk's -v would turn it into a space)."""
    info = tmp_path / "proc" / "7" / "mountinfo"
    info.parent.mkdir(parents=True)
    info.write_text("1 2 0:1 /rel/a /srv/my\\040pool/current rw - ext4 x rw\n")
    lib = shell.with_replica_lib("").replace('"/proc/"', f'"{tmp_path}/proc/"')
    result = sh(lib + "mount_roots '/srv/my\\040pool/current' 7")
    assert result.stdout == "/rel/a\n", result.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in SHELL_SCRIPTS.glob("*.sh")))
def test_a_sent_script_is_still_valid_shell_without_its_comments(name, sh):
    sent = shell.script(name)
    assert not [line for line in sent.splitlines() if line.lstrip().startswith("#")]
    functions = [line for line in (SHELL_SCRIPTS / name).read_text().splitlines()
                 if line.endswith("() {")]
    assert set(functions) <= set(sent.splitlines())
    result = sh(f"sh -n -c {shell.q(sent)}")
    assert (result.returncode, result.stderr) == (0, "")


def test_the_stop_script_is_installed_with_the_library_it_sources_first():
    lib, stop = render.stop_script_files()
    assert lib.path == stop.path.with_name(shell.REPLICA_LIB)
    assert lib.text == (SHELL_SCRIPTS / shell.REPLICA_LIB).read_text()
    assert (stop.text, stop.mode) == (STOP_SCRIPT.read_text(), "0755")
    assert '. "$(dirname -- "$0")/replica-lib.sh"' in stop.text


# --- replica-stop.sh on real processes -----------------------------------------------------------

@pytest.fixture
def pool() -> str:
    """A pool name no other process of this machine has in its title."""
    return f"t{uuid.uuid4().hex[:12]}"


def spawn_worker(procs: list[subprocess.Popen[bytes]], title: str) -> subprocess.Popen[bytes]:
    """A process whose whole command line is `title` (`cat` waiting on its stdin, renamed),
    so `ps -o args=` shows exactly that; no core file when SIGQUIT ends it."""
    proc = subprocess.Popen(["bash", "-c", 'ulimit -c 0; exec -a "$0" cat', title],
                            stdin=subprocess.PIPE)
    procs.append(proc)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes() != title.encode() + b"\0":
        assert time.monotonic() < deadline, f"pid {proc.pid} never showed title {title!r}"
        time.sleep(0.005)
    return proc


def run_stop(sock: Path, pool: str, timeout: int = 5) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(STOP_SCRIPT), str(sock), f"{pool}-1", str(timeout)],
                          capture_output=True, text=True, timeout=30, check=False)


def test_the_stop_script_after_a_clean_stop_does_nothing(tmp_path, pool):
    sock = tmp_path / "www-1.sock"
    sock.touch()
    result = run_stop(sock, pool)
    assert (result.returncode, result.stderr) == (0, "")
    assert sock.exists()


def test_the_stop_script_stops_the_workers_a_dead_master_left_and_only_those(
        tmp_path, pool, masters):
    sock = tmp_path / "www-1.sock"
    sock.touch()
    left = [spawn_worker(masters, f"php-fpm: pool {pool}-1") for _ in range(2)]
    other = spawn_worker(masters, f"php-fpm: pool {pool}-11")
    result = run_stop(sock, pool)
    assert result.returncode == 0, result.stderr
    assert "the master is gone" in result.stderr
    assert not sock.exists()  # Apache can no longer connect to them
    assert all(p.wait(timeout=5) != 0 for p in left)  # ended by SIGQUIT
    assert other.poll() is None


def test_the_stop_script_lets_open_connections_finish_before_stopping_the_workers(
        tmp_path, pool, masters):
    sock = tmp_path / "www-1.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(sock))
    accepted, _ = server.accept()
    worker = spawn_worker(masters, f"php-fpm: pool {pool}-1")
    closed_at: list[float] = []

    def finish_the_request() -> None:
        time.sleep(0.5)
        accepted.close()
        client.close()
        closed_at.append(time.monotonic())

    closer = threading.Thread(target=finish_the_request)
    try:
        closer.start()
        result = run_stop(sock, pool, timeout=10)
        stopped_at = time.monotonic()
    finally:
        closer.join()
        server.close()
    assert result.returncode == 0, result.stderr
    assert worker.poll() is not None and closed_at[0] <= stopped_at
    assert stopped_at - closed_at[0] < 5  # it went on once the connection closed


def test_the_stop_script_finds_its_library_from_another_directory(tmp_path, pool):
    result = subprocess.run(["sh", str(STOP_SCRIPT), str(tmp_path / "s"), f"{pool}-1", "1"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30,
                            check=False, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert (result.returncode, result.stderr) == (0, "")


# --- wait_unused: the host's wait before it stops a retired set ----------------------------------

def _wait_unused(sock: Path, ticks: int) -> subprocess.Popen[str]:
    command = shell.with_replica_lib(f"wait_unused {shell.q(str(sock))} {ticks}")
    return subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, text=True)


def _listening_with_a_client(path: Path) -> tuple[socket.socket, socket.socket]:
    """A unix socket listening at `path` and a client connected to it (queued: not yet
    accepted)."""
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    client = socket.socket(socket.AF_UNIX)
    client.connect(str(path))
    return server, client


def test_wait_unused_returns_once_the_last_connection_to_the_socket_closed(tmp_path):
    path = tmp_path / "r.sock"
    server, client = _listening_with_a_client(path)
    accepted, _ = server.accept()
    waiting = _wait_unused(path, 100)
    time.sleep(0.6)
    assert waiting.poll() is None  # a request in flight: still waiting
    client.close()
    accepted.close()
    out, _ = waiting.communicate(timeout=5)
    assert 6 <= int(out) < 30
    server.close()


def test_wait_unused_gives_up_after_its_ticks(tmp_path):
    path = tmp_path / "r.sock"
    server, client = _listening_with_a_client(path)  # never accepted: counts as in flight
    out, _ = _wait_unused(path, 3).communicate(timeout=5)
    assert out.strip() == "3"
    client.close()
    server.close()


def test_a_set_of_sockets_is_waited_on_side_by_side_each_with_its_own_count(tmp_path):
    busy_path, idle_path = tmp_path / "busy.sock", tmp_path / "idle.sock"
    busy, client = _listening_with_a_client(busy_path)
    idle = socket.socket(socket.AF_UNIX)
    idle.bind(str(idle_path))
    idle.listen()
    started = time.monotonic()
    command = fpm.unused_command([busy_path, idle_path], 5)
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    # the busy socket used its 5 ticks, the idle one 1 (two quiet readings); side by side,
    # so the whole wait is the longest one, not the sum
    assert sorted(out.split("\n")[:-1]) == ["0 5", "1 1"]
    assert time.monotonic() - started < 0.9
    client.close()
    busy.close()
    idle.close()


def test_count_strays_counts_each_replicas_workers_outside_its_master_in_one_pass():
    table = "\n".join([
        "   10     1 php-fpm: master process (/x/www-1.conf)",
        "   11    10 php-fpm: pool www-1",  # a child of its live master: not a stray
        "   12     1 php-fpm: pool www-1   ",  # left by a dead master (ps pads titles)
        "   13     1 php-fpm: pool www-2",  # www-2 has no master: every worker is a stray
        "   14     1 php-fpm: pool www-2",
        "   15     1 php-fpm: pool www-22",  # another replica's title, not www-2's
    ])
    command = shell.with_replica_lib(
        "count_strays '10 php-fpm: pool www-1' '- php-fpm: pool www-2' "
        "'- php-fpm: pool www-3'")
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True,
                         env={**os.environ, "FPM_FLEET_PS": table}).stdout
    assert out.split() == ["1", "2", "0"]
