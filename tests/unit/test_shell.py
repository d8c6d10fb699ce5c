"""tasks.shell: exact command strings, and the same commands run for real in a tmp dir."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from tasks import fpm, manifest, shell
from tasks.layout import ApacheLayout, Layout

# --- exact strings -----------------------------------------------------------------------------

def test_as_root_leaves_a_root_login_command_untouched():
    assert shell.as_root("id -u", sudo=False) == "id -u"


def test_as_root_wraps_the_command_in_passwordless_sudo_sh_c():
    assert shell.as_root("id -u", sudo=True) == "sudo -n -- sh -c 'id -u'"


def test_as_root_keeps_a_quoted_command_intact_word_for_word():
    command = "printf '%s\\n' \"$HOME\" 'it'\"'\"'s' > /tmp/a\\ b"
    assert shlex.split(shell.as_root(command, sudo=True)) == [
        "sudo", "-n", "--", "sh", "-c", command]


def test_balancer_set_posts_form_with_referer_nonce_and_reads_xml_back():
    url = "http://127.0.0.1:8081/balancer-manager"
    cmd = shell.balancer_set(url, "www", "unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1",
                             "3f2a-11", {"D": 1})
    assert cmd == (
        "curl -sS --fail --max-time 5 -o /dev/null "
        "-H 'Referer: http://127.0.0.1:8081/balancer-manager' "
        "--data-urlencode b=www "
        "--data-urlencode 'w=unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1' "
        "--data-urlencode nonce=3f2a-11 --data w_status_D=1 "
        "http://127.0.0.1:8081/balancer-manager && "
        "curl -sS --fail --max-time 5 -H 'Referer: http://127.0.0.1:8081/balancer-manager' "
        "'http://127.0.0.1:8081/balancer-manager?xml=1'")


def test_balancer_set_sends_one_data_field_per_flag_in_order():
    cmd = shell.balancer_set("http://127.0.0.1:8081/bm", "www", "w", "n",
                             {"D": 0, "N": 0, "S": 0, "E": 0})
    words = shlex.split(cmd.split(" && ")[0])
    data = [words[i + 1] for i, w in enumerate(words) if w == "--data"]
    assert data == ["w_status_D=0", "w_status_N=0", "w_status_S=0", "w_status_E=0"]


def test_balancer_xml_sends_a_same_host_referer_and_asks_for_xml():
    assert shell.balancer_xml("http://127.0.0.1:8081/balancer-manager") == (
        "curl -sS --fail --max-time 5 -H 'Referer: http://127.0.0.1:8081/balancer-manager' "
        "'http://127.0.0.1:8081/balancer-manager?xml=1'")


def test_fcgi_request_sets_a_clean_cgi_environment_for_the_replica_socket():
    cmd = shell.fcgi_request("/srv/fpm-fleet/www/run/www-1.sock", "/fpm-ping", "/fpm-ping")
    assert cmd == (
        "timeout 5 env -i REQUEST_METHOD=GET SCRIPT_NAME=/fpm-ping SCRIPT_FILENAME=/fpm-ping "
        "QUERY_STRING= REQUEST_URI=/fpm-ping SERVER_NAME=fpm-fleet REMOTE_ADDR=127.0.0.1 "
        "cgi-fcgi -bind -connect /srv/fpm-fleet/www/run/www-1.sock")


def test_fcgi_request_with_query_quotes_the_request_uri_and_formats_the_timeout():
    cmd = shell.fcgi_request("/r/www-1-status.sock", "/fpm-status", "/fpm-status",
                             query="json", timeout=2.5)
    assert cmd.startswith("timeout 2.5 env -i ")
    assert "QUERY_STRING=json 'REQUEST_URI=/fpm-status?json'" in cmd


def test_fcgi_request_keeps_a_script_filename_with_spaces_as_one_word():
    cmd = shell.fcgi_request("/srv/a b/run/www-1.sock", "/health.php",
                             PurePosixPath("/srv/a b/www/current/health.php"))
    words = shlex.split(cmd)
    assert "SCRIPT_FILENAME=/srv/a b/www/current/health.php" in words
    assert words[-1] == "/srv/a b/run/www-1.sock"


def test_apache_test_and_ctl_differ_between_system_and_instance_mode():
    system = ApacheLayout("system", PurePosixPath("/srv/fpm-fleet/apache"))
    instance = ApacheLayout("instance", PurePosixPath("/srv/h1/apache"))
    assert shell.apache_test(system) == "apache2ctl configtest"
    assert shell.apache_test(instance) == "apache2 -f /srv/h1/apache/apache2.conf -t"
    assert shell.apache_ctl(system, "graceful") == (
        "apache2ctl graceful </dev/null >/dev/null 2>/tmp/fpm-fleet-apache2ctl.log || "
        "{ cat -- /tmp/fpm-fleet-apache2ctl.log >&2; exit 1; }")
    assert shell.apache_ctl(instance, "start") == (
        "apache2 -f /srv/h1/apache/apache2.conf -k start </dev/null >/dev/null "
        "2>/srv/h1/apache/log/ctl.log || { cat -- /srv/h1/apache/log/ctl.log >&2; exit 1; }")


def test_apache_ctl_refuses_actions_other_than_start_graceful_stop():
    with pytest.raises(ValueError):
        shell.apache_ctl(ApacheLayout("system", PurePosixPath("/x")), "restart")


def test_read_current_release_reads_the_symlink():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert shell.read_current_release(layout) == (
        "readlink -- /srv/fpm-fleet/www/current.release")


# --- sections ----------------------------------------------------------------------------------

def test_sections_roundtrip_through_sh_into_split_sections(sh):
    cmd = shell.sections([("one", "echo a; echo b"),
                          ("two words", "printf 'no trailing newline'"),
                          ("empty", "true"),
                          ("failing", "echo partial; false")])
    result = sh(cmd)
    assert shell.split_sections(result.stdout) == {
        "one": "a\nb", "two words": "no trailing newline", "empty": "", "failing": "partial"}


def test_split_sections_ignores_output_before_the_first_marker():
    text = f"noise\n{shell.SECTION} a\n1\n{shell.SECTION} b\n2\n"
    assert shell.split_sections(text) == {"a": "1", "b": "2"}


def test_split_sections_of_plain_text_is_empty():
    assert shell.split_sections("no markers here\n") == {}


# --- mountinfo escaping ------------------------------------------------------------------------

def test_mountinfo_escape_writes_space_tab_newline_backslash_as_octal():
    assert shell.mountinfo_escape("/a b\tc\nd\\e") == "/a\\040b\\011c\\012d\\134e"


@pytest.mark.parametrize("path", ["/srv/plain", "/srv/a b", "/x\\040y", "/t\tn\nb\\"])
def test_mountinfo_escape_and_unescape_roundtrip(path):
    assert fpm.unescape_mountinfo(shell.mountinfo_escape(path)) == path


# --- files -------------------------------------------------------------------------------------

def test_write_stdin_replaces_the_file_with_stdin_and_leaves_no_temp_file(sh, tmp_path):
    target = tmp_path / "dir with space" / "fpm 1.conf"
    target.parent.mkdir()
    target.write_text("old\n")
    result = sh(shell.write_stdin(target, mode="0600"), stdin=b"new content\n")
    assert result.returncode == 0, result.stderr
    assert target.read_text() == "new content\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["fpm 1.conf"]


def test_checksums_output_is_parsed_by_provision_and_skips_missing_files(sh, tmp_path):
    present = tmp_path / "a b.conf"
    present.write_text("x\n")
    other = tmp_path / "c.conf"
    other.write_text("y\n")
    result = sh(shell.checksums([present, tmp_path / "missing.conf", other]))
    assert result.returncode == 0
    sums = manifest.parse_checksums(result.stdout)
    assert sums == {str(present): _sha256("x\n"), str(other): _sha256("y\n")}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_provision_compares_rendered_text_with_remote_checksums():
    # the same digest the host prints for an identical file means "unchanged"
    out = f"{_sha256('same')}  /etc/a.conf\n{_sha256('old')}  /etc/b.conf\n"
    sums = manifest.parse_checksums(out)
    assert sums["/etc/a.conf"] == _sha256("same")
    assert sums["/etc/b.conf"] != _sha256("new")


class TestInstallChecked:
    """Staged `<file>.fpm-fleet-new` goes live only if the test passes."""

    @staticmethod
    def stage(path: Path, old: str | None, new: str) -> None:
        if old is not None:
            path.write_text(old)
        Path(f"{path}{shell.STAGED}").write_text(new)

    def test_passing_test_installs_the_new_file_and_removes_backups(self, sh, tmp_path):
        conf = tmp_path / "site a.conf"
        self.stage(conf, "old\n", "new\n")
        result = sh(shell.install_checked([conf], f"grep -q new {shlex.quote(str(conf))}"))
        assert result.returncode == 0, result.stderr
        assert conf.read_text() == "new\n"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["site a.conf"]

    def test_failing_test_restores_the_old_file_and_reports_the_test_output(self, sh, tmp_path):
        conf = tmp_path / "site.conf"
        self.stage(conf, "old\n", "broken\n")
        result = sh(shell.install_checked([conf], "echo 'Syntax error on line 3'; false"))
        assert result.returncode == 1
        assert conf.read_text() == "old\n"
        assert "Syntax error on line 3" in result.stderr
        assert not Path(f"{conf}.fpm-fleet-old").exists()

    def test_failing_test_removes_a_file_that_did_not_exist_before(self, sh, tmp_path):
        conf = tmp_path / "new.conf"
        self.stage(conf, None, "broken\n")
        result = sh(shell.install_checked([conf], "false"))
        assert result.returncode == 1
        assert not conf.exists()

    def test_failing_test_restores_every_file_of_the_set(self, sh, tmp_path):
        main, site = tmp_path / "apache2.conf", tmp_path / "site.conf"
        self.stage(main, "main-old\n", "main-new\n")
        self.stage(site, "site-old\n", "site-new\n")
        result = sh(shell.install_checked([main, site], "false"))
        assert result.returncode == 1
        assert (main.read_text(), site.read_text()) == ("main-old\n", "site-old\n")

    def test_the_test_sees_the_new_files_in_place(self, sh, tmp_path):
        main, site = tmp_path / "apache2.conf", tmp_path / "site.conf"
        self.stage(main, "main-old\n", "main-new\n")
        self.stage(site, None, "site-new\n")
        test = f"cat {shlex.quote(str(main))} {shlex.quote(str(site))} > {tmp_path}/seen"
        assert sh(shell.install_checked([main, site], test)).returncode == 0
        assert (tmp_path / "seen").read_text() == "main-new\nsite-new\n"


def test_apache_running_is_true_only_for_a_live_pid(sh, tmp_path):
    apache = ApacheLayout("instance", PurePosixPath(tmp_path / "apache"))
    Path(apache.run_dir).mkdir(parents=True)
    assert sh(shell.apache_running(apache)).returncode != 0  # no pid file
    Path(apache.pid_file).write_text(f"{os.getpid()}\n")
    assert sh(shell.apache_running(apache)).returncode == 0
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path(apache.pid_file).write_text(f"{dead.pid}\n")
    assert sh(shell.apache_running(apache)).returncode != 0


def test_probe_tools_prints_one_line_per_tool_with_path_or_dash(sh):
    lines = sh(shell.probe_tools()).stdout.splitlines()
    tools = dict(line.split("\t") for line in lines)
    assert set(tools) >= {"unshare", "cgi-fcgi", "curl", "flock", "sha256sum", "apache2"}
    assert tools["sha256sum"].endswith("/sha256sum")
    assert all(v == "-" or v.startswith("/") for v in tools.values())


# --- quoting: nothing injected ever runs -------------------------------------------------------

def test_shell_builders_never_execute_metacharacters_in_paths(sh, evil_layout, pwned, tmp_path):
    lay = evil_layout
    apache = ApacheLayout("instance", lay.dir / "apache")
    evil = "x;$(touch pwned)`touch pwned`'\""
    commands = [
        shell.checksums([lay.fpm_conf(1), lay.dir / evil]),
        shell.read_current_release(lay),
        shell.probe_replicas(lay, [1, 2]),
        shell.fpm_stop(lay, 1, 0.1),
        shell.fpm_start(lay, 1, "/bin/true", evil),
        shell.apache_running(apache),
        shell.apache_test(apache),
        shell.fcgi_request(lay.sock(1), evil, lay.current / evil, query=evil, timeout=1),
        shell.balancer_xml(f"http://127.0.0.1:9/{evil}"),
        shell.balancer_set(f"http://127.0.0.1:9/{evil}", evil, evil, evil, {"D": 1}),
        shell.install_checked([lay.conf / evil], "true"),
        shell.as_root(shell.read_current_release(lay), sudo=False),
        shell.open_connections(lay.sock(1)),
    ]
    for cmd in commands:
        sh(cmd)
        assert pwned() == [], cmd
    sh(shell.write_stdin(lay.conf / evil), stdin=b"data")
    assert pwned() == []
    assert (Path(lay.conf) / evil).read_bytes() == b"data"


def test_sections_quote_their_names(sh, pwned):
    out = sh(shell.sections([("$(touch pwned)", "echo 1")])).stdout
    assert pwned() == []
    assert shell.split_sections(out) == {"$(touch pwned)": "1"}


# --- the FastCGI request, against a minimal FastCGI responder ----------------------------------

def _fcgi_records(conn: socket.socket) -> Iterator[tuple[int, bytes]]:
    buf = b""
    while True:
        while len(buf) < 8:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        _, kind, _, length, pad, _ = struct.unpack(">BBHHBB", buf[:8])
        while len(buf) < 8 + length + pad:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        yield kind, buf[8:8 + length]
        buf = buf[8 + length + pad:]


def _fcgi_params(data: bytes) -> dict[str, str]:
    out, i = {}, 0

    def length() -> int:
        nonlocal i
        if data[i] < 128:
            i += 1
            return data[i - 1]
        i += 4
        return struct.unpack(">I", data[i - 4:i])[0] & 0x7FFFFFFF

    while i < len(data):
        n, v = length(), length()
        out[data[i:i + n].decode()] = data[i + n:i + n + v].decode()
        i += n + v
    return out


def _fcgi_serve_once(server: socket.socket, answer: bytes, seen: dict[str, str]) -> None:
    conn, _ = server.accept()
    with conn:
        params = b""
        for kind, content in _fcgi_records(conn):
            if kind == 4:
                params += content
            elif kind == 5 and not content:
                break
        seen.update(_fcgi_params(params))
        for kind, content in ((6, answer), (6, b""), (3, b"\0" * 8)):
            conn.sendall(struct.pack(">BBHHBB", 1, kind, 1, len(content), 0, 0) + content)


@pytest.fixture
def fcgi_socket() -> Iterator[Path]:
    short = Path(tempfile.mkdtemp(prefix="fcgi ", dir="/tmp"))  # sun_path is short
    try:
        yield short / "www-1.sock"
    finally:
        shutil.rmtree(short)


@pytest.mark.skipif(shutil.which("cgi-fcgi") is None, reason="needs libfcgi-bin's cgi-fcgi")
def test_fcgi_request_delivers_exactly_the_cgi_params_and_parse_fcgi_reads_the_answer(
        sh, fcgi_socket):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(fcgi_socket))
    server.listen(1)
    server.settimeout(5)
    seen: dict[str, str] = {}
    answer = b"Status: 503 Service Unavailable\r\nContent-type: text/plain\r\n\r\nbusy\n"
    t = threading.Thread(target=_fcgi_serve_once, args=(server, answer, seen), daemon=True)
    t.start()
    try:
        result = sh(shell.fcgi_request(fcgi_socket, "/health.php",
                                       "/srv/a b/www/current/health.php", query="a=1&b=2"))
        t.join(5)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert seen == {"REQUEST_METHOD": "GET", "SCRIPT_NAME": "/health.php",
                    "SCRIPT_FILENAME": "/srv/a b/www/current/health.php",
                    "QUERY_STRING": "a=1&b=2", "REQUEST_URI": "/health.php?a=1&b=2",
                    "SERVER_NAME": "fpm-fleet", "REMOTE_ADDR": "127.0.0.1"}
    resp = fpm.parse_fcgi(result.stdout)
    assert resp.status == 503
    assert resp.headers["content-type"] == "text/plain"
    assert resp.body == "busy\n"


# --- replica processes: probe and graceful stop, with stand-in masters -------------------------

def _title(layout: Layout, n: int) -> str:
    return shell.FPM_MASTER_TITLE.format(conf=layout.fpm_conf(n))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""


def _wait_for_title(pid: int, title: str) -> None:
    deadline = time.monotonic() + 5
    while _cmdline(pid) != title:
        assert time.monotonic() < deadline, f"pid {pid} never showed title {title!r}"
        time.sleep(0.005)


@pytest.fixture
def masters() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stand-in php-fpm masters (`sleep` renamed with exec -a); killed and reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _spawn(masters: list[subprocess.Popen[bytes]], title: str,
           ignore_quit: bool = False) -> subprocess.Popen[bytes]:
    script = ("trap '' QUIT; " if ignore_quit else "") + 'exec -a "$0" sleep 30'
    proc = subprocess.Popen(["bash", "-c", script, title])
    masters.append(proc)
    _wait_for_title(proc.pid, title)
    return proc


def test_probe_reports_pid_state_title_for_a_live_master_and_dashes_otherwise(
        sh, layout, masters):
    master = _spawn(masters, _title(layout, 1))
    Path(layout.pid(1)).write_text(f"{master.pid}\n")
    Path(layout.pid(3)).write_text("garbage\n")
    procs = fpm.parse_probe(sh(shell.probe_replicas(layout, [1, 2, 3])).stdout)
    assert set(procs) == {1, 2, 3}
    p1 = procs[1]
    assert p1.pid == master.pid
    assert p1.state == "S"
    assert p1.alive
    assert p1.elapsed is not None and p1.elapsed < 60
    assert p1.is_master_of(layout.fpm_conf(1))
    assert not p1.is_master_of(layout.fpm_conf(2))
    assert p1.pinned is None  # nothing mounted on current/ in this namespace
    for n in (2, 3):
        assert procs[n].pid is None
        assert not procs[n].alive


def test_stop_sends_sigquit_and_treats_a_zombie_as_stopped(sh, layout, masters):
    master = _spawn(masters, _title(layout, 1))
    Path(layout.pid(1)).write_text(f"{master.pid}\n")
    started = time.monotonic()
    result = sh(shell.fpm_stop(layout, 1, timeout=5))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stopped"]
    assert time.monotonic() - started < 2  # did not wait for the zombie to be reaped
    assert master.wait(timeout=5) == -signal.SIGQUIT


def test_stop_escalates_to_sigterm_when_sigquit_is_ignored_and_says_so(sh, layout, masters):
    master = _spawn(masters, _title(layout, 1), ignore_quit=True)
    Path(layout.pid(1)).write_text(f"{master.pid}\n")
    result = sh(shell.fpm_stop(layout, 1, timeout=0.1))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["escalated", "stopped"]
    assert master.wait(timeout=5) == -signal.SIGTERM


def test_stop_refuses_a_pid_that_is_not_this_replicas_master(sh, layout, masters):
    other = _spawn(masters, _title(layout, 2))
    Path(layout.pid(1)).write_text(f"{other.pid}\n")
    result = sh(shell.fpm_stop(layout, 1, timeout=0.1))
    assert result.returncode == 3
    assert "is not this replica's php-fpm master" in result.stderr
    assert other.poll() is None  # still running: nothing was signalled


def test_stop_without_pid_file_is_not_running(sh, layout):
    result = sh(shell.fpm_stop(layout, 1, timeout=0.1))
    assert (result.returncode, result.stdout.split()) == (0, ["not-running"])


def test_stop_with_a_stale_pid_file_is_not_running_and_removes_it(sh, layout):
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path(layout.pid(1)).write_text(f"{dead.pid}\n")
    result = sh(shell.fpm_stop(layout, 1, timeout=0.1))
    assert (result.returncode, result.stdout.split()) == (0, ["not-running"])
    assert not Path(layout.pid(1)).exists()


def test_start_refuses_a_missing_release_with_exit_3(sh, layout):
    result = sh(shell.fpm_start(layout, 1, "/bin/true", "v9"))
    assert result.returncode == 3
    assert "release v9 is missing" in result.stderr


# --- pinning: a real private mount namespace (root only) ---------------------------------------

FAKE_FPM = r"""#!/bin/bash
# Stand-in for php-fpm --fpm-config CONF --daemonize: a master titled like FPM that
# lives on in the caller's mount namespace; returns once it runs, like --daemonize.
PYTHON=@PYTHON@
MASTER='import signal, time; signal.signal(signal.SIGQUIT, signal.SIG_DFL); time.sleep(30)'
conf=$2
dir=$(dirname "$(dirname "$conf")")
base=$(basename "$conf" .conf)
title="php-fpm: master process ($conf)"
# a background job of a script starts with SIGQUIT ignored: restore it, as FPM does
exec -a "$title" "$PYTHON" -c "$MASTER" </dev/null >/dev/null 2>&1 &
pid=$!
printf '%s\n' "$pid" > "$dir/run/$base.pid"
until [ "$(tr '\0' '\n' < /proc/$pid/cmdline | head -n 1)" = "$title" ]; do sleep 0.005; done
"""


def _can_pin() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


needs_pinning = pytest.mark.skipif(not _can_pin(), reason="needs root and unshare --mount")


@pytest.fixture
def fake_fpm(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "php-fpm"
    path.parent.mkdir()
    path.write_text(FAKE_FPM.replace("@PYTHON@", shlex.quote(sys.executable)))
    path.chmod(0o755)
    return path


def _kill_stand_in(layout: Layout, n: int) -> None:
    """Kill the daemonized stand-in by its pid, only if it still carries our title."""
    try:
        pid = int(Path(layout.pid(n)).read_text())
    except (OSError, ValueError):
        return
    if _cmdline(pid) == _title(layout, n):
        os.kill(pid, signal.SIGKILL)


def _pinned_layout(base: Path) -> Layout:
    lay = Layout(dir=PurePosixPath(base / "www"), pool="www")
    for d in lay.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    Path(lay.release("v1")).mkdir()
    Path(lay.release("v1"), "index.php").write_text("<?php echo 'v1';\n")
    return lay


@needs_pinning
def test_start_pins_the_release_probe_sees_it_and_stop_ends_the_master(sh, tmp_path, fake_fpm):
    lay = _pinned_layout(tmp_path / "srv")
    try:
        result = sh(shell.fpm_start(lay, 1, str(fake_fpm), "v1"))
        assert result.returncode == 0, result.stderr
        proc = fpm.parse_probe(sh(shell.probe_replicas(lay, [1])).stdout)[1]
        assert proc.is_master_of(lay.fpm_conf(1))
        assert proc.alive
        assert proc.release == "v1"
        assert not proc.release_deleted
        # the bind mount never leaked into our namespace
        assert not any(Path(lay.current).iterdir())

        shutil.rmtree(lay.release("v1"))
        gone = fpm.parse_probe(sh(shell.probe_replicas(lay, [1])).stdout)[1]
        assert gone.release == "v1"
        assert gone.release_deleted

        stopped = sh(shell.fpm_stop(lay, 1, timeout=5))
        assert stopped.stdout.split() == ["stopped"], stopped.stderr
    finally:
        _kill_stand_in(lay, 1)


@needs_pinning
def test_probe_finds_the_pinned_release_under_a_root_with_a_space(sh, tmp_path, fake_fpm):
    lay = _pinned_layout(tmp_path / "fleet root")
    try:
        assert sh(shell.fpm_start(lay, 1, str(fake_fpm), "v1")).returncode == 0
        proc = fpm.parse_probe(sh(shell.probe_replicas(lay, [1])).stdout)[1]
        assert proc.is_master_of(lay.fpm_conf(1))
        assert proc.release == "v1"
    finally:
        _kill_stand_in(lay, 1)


def test_open_connections_counts_connected_entries_of_that_socket_only():
    cmd = shell.open_connections(PurePosixPath("/srv/www/run/www-1.sock"))
    assert cmd.startswith("p=/srv/www/run/www-1.sock awk ")
    table = ("Num       RefCount Protocol Flags    Type St Inode Path\n"
             "0: 00000002 00000000 00010000 0001 01 11 /srv/www/run/www-1.sock\n"
             "0: 00000003 00000000 00000000 0001 03 12 /srv/www/run/www-1.sock\n"
             "0: 00000003 00000000 00000000 0001 03 13 /srv/www/run/www-2.sock\n"
             "0: 00000003 00000000 00000000 0001 03 14 /srv/www/run/www-1.sock\n")
    awk = cmd.split(" awk ", 1)[1].replace("/proc/net/unix", "-")
    out = subprocess.run(f"p=/srv/www/run/www-1.sock awk {awk}", shell=True, input=table,
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "2"


def test_system_apache_enables_every_module_the_site_uses_rewrite_included():
    assert shell.apache_enable_site() == (
        "a2enmod -q proxy proxy_fcgi proxy_balancer lbmethod_bybusyness lbmethod_byrequests "
        "slotmem_shm authz_host rewrite >/dev/null && a2ensite -q fpm-fleet >/dev/null")


# --- fab check: the pool through Apache, and the listen port -----------------------------------

def test_vhost_request_asks_apache_with_the_pools_host_header_only_once_a_release_is_active():
    lay = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert shell.vhost_request(lay, "http://127.0.0.1:8088/health.php", "www.example") == (
        "if [ -e /srv/fpm-fleet/www/current.release ]; then curl -sS -g --noproxy '*' "
        "-o /dev/null -w '%{http_code}' --max-time 5 -H 'Host: www.example' "
        "http://127.0.0.1:8088/health.php; else echo no-release; fi")


@pytest.fixture
def http_server() -> Iterator[tuple[int, list[str]]]:
    """A one-thread HTTP server on a free loopback port that records each Host header and
    answers 200 for /health.php, 404 otherwise."""
    import http.server

    hosts: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hosts.append(self.headers["Host"])
            self.send_response(200 if self.path == "/health.php" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], hosts
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_vhost_request_prints_the_status_apache_answered_with(sh, layout, http_server):
    port, hosts = http_server
    Path(layout.current_release).symlink_to("releases")
    ok = sh(shell.vhost_request(layout, f"http://127.0.0.1:{port}/health.php", "www.example"))
    missing = sh(shell.vhost_request(layout, f"http://127.0.0.1:{port}/nope", "www.example"))
    assert (ok.stdout, missing.stdout) == ("200", "404")
    assert hosts == ["www.example", "www.example"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_vhost_request_prints_000_and_the_reason_when_nothing_answers(sh, layout):
    Path(layout.current_release).symlink_to("releases")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        result = sh(shell.vhost_request(layout, f"http://127.0.0.1:{port}/", "www"))
    assert result.stdout == "000"
    assert "Failed to connect" in result.stderr or "Couldn't connect" in result.stderr


def test_vhost_request_before_the_first_deploy_requests_nothing(sh, layout):
    result = sh(shell.vhost_request(layout, "http://127.0.0.1:9/health.php", "www"))
    assert (result.returncode, result.stdout.strip()) == (0, shell.NO_RELEASE)


def test_tcp_listening_reads_the_kernels_table_for_the_port_in_hex():
    assert shell.tcp_listening(8088) == (
        "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=1F98 "
        "'$4 == \"0A\" && substr($2, index($2, \":\") + 1) == p {f = 1} END {exit !f}'")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_tcp_listening_is_true_only_while_a_socket_listens_on_the_port(sh, family):
    address = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family) as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
        assert sh(shell.tcp_listening(port)).returncode == 1  # bound is not listening
        s.listen()
        assert sh(shell.tcp_listening(port)).returncode == 0
    assert sh(shell.tcp_listening(port)).returncode == 1
