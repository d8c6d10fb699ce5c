"""fpm_fleet.remote.shell: exact command strings, and the same commands run for real in a tmp
dir."""

from __future__ import annotations

import hashlib
import http.server
import os
import shlex
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import ClassVar

import pytest

from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.releases import manifest
from fpm_fleet.remote import shell
from fpm_fleet.web import apache_site, balancer

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
    cmd = balancer.set_command(url, "www", "unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1",
                             "3f2a-11", {"D": 1})
    # one curl, its requests in order (`--next`), each with its own options
    assert cmd == (
        "curl -sS --fail-early "
        "--fail --max-time 5 --netrc-file /etc/fpm-fleet/balancer-manager.netrc "
        "-o /dev/null -H 'Referer: http://127.0.0.1:8081/balancer-manager' "
        "--data-urlencode b=www "
        "--data-urlencode 'w=unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1' "
        "--data-urlencode nonce=3f2a-11 --data w_status_D=1 "
        "http://127.0.0.1:8081/balancer-manager --next "
        "--fail --max-time 5 --netrc-file /etc/fpm-fleet/balancer-manager.netrc "
        "-H 'Referer: http://127.0.0.1:8081/balancer-manager' "
        "'http://127.0.0.1:8081/balancer-manager?xml=1'")


class _Manager(http.server.BaseHTTPRequestHandler):
    """A stand-in balancer-manager: records each request; refuses POSTs whose form names a
    member in `refused`; answers a GET with a page."""

    seen: ClassVar[list[str]] = []
    refused: ClassVar[tuple[str, ...]] = ()

    def do_POST(self) -> None:
        form = self.rfile.read(int(self.headers["Content-Length"])).decode()
        self.seen.append(f"POST {urllib.parse.unquote(form)}")
        bad = any(f"w={m}&" in urllib.parse.unquote(form) for m in self.refused)
        self._answer(403 if bad else 200, b"ok")

    def do_GET(self) -> None:
        self.seen.append(f"GET {self.path}")
        self._answer(200, b"<page/>")

    def _answer(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("refused", [(), ("b",)])
def test_balancer_posts_go_in_order_over_one_curl_and_stop_at_the_first_refused(
        tmp_path, refused):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Manager)
    _Manager.seen, _Manager.refused = [], refused
    threading.Thread(target=server.serve_forever, daemon=True).start()
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login u password p\n")
    url = f"http://127.0.0.1:{server.server_address[1]}/balancer-manager"
    cmd = balancer.set_many_command(url, "www", "n1", [("a", {"D": 0}), ("b", {"N": 1}),
                                                       ("c", {"N": 1})])
    cmd = cmd.replace(shell.q(balancer.MANAGER_NETRC), shell.q(str(netrc)))
    proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=20,
                          check=False)
    server.shutdown()
    members = [line.split("w=")[1].split("&")[0] for line in _Manager.seen if "w=" in line]
    if refused:
        assert proc.returncode == 22 and members == ["a", "b"], _Manager.seen
        assert not any(line.startswith("GET") for line in _Manager.seen)
    else:
        assert proc.returncode == 0 and proc.stdout == "<page/>", proc.stderr
        assert members == ["a", "b", "c"] and _Manager.seen[-1].startswith("GET")


def test_balancer_set_sends_one_data_field_per_flag_in_order():
    cmd = balancer.set_command("http://127.0.0.1:8081/bm", "www", "w", "n",
                             {"D": 0, "N": 0, "S": 0, "E": 0})
    words = shlex.split(cmd.split(" && ")[0])
    data = [words[i + 1] for i, w in enumerate(words) if w == "--data"]
    assert data == ["w_status_D=0", "w_status_N=0", "w_status_S=0", "w_status_E=0"]


def test_balancer_xml_sends_a_same_host_referer_and_asks_for_xml():
    assert balancer.xml_command("http://127.0.0.1:8081/balancer-manager") == (
        "curl -sS --fail --max-time 5 --netrc-file /etc/fpm-fleet/balancer-manager.netrc "
        "-H 'Referer: http://127.0.0.1:8081/balancer-manager' "
        "'http://127.0.0.1:8081/balancer-manager?xml=1'")


def test_fcgi_request_sets_a_clean_cgi_environment_for_the_replica_socket():
    cmd = fpm.fcgi_command("/srv/fpm-fleet/www/run/www-1.sock", "/fpm-ping", "/fpm-ping")
    assert cmd == (
        "timeout 5 env -i REQUEST_METHOD=GET SCRIPT_NAME=/fpm-ping SCRIPT_FILENAME=/fpm-ping "
        "QUERY_STRING= REQUEST_URI=/fpm-ping SERVER_NAME=fpm-fleet REMOTE_ADDR=127.0.0.1 "
        "cgi-fcgi -bind -connect /srv/fpm-fleet/www/run/www-1.sock")


def test_fcgi_request_with_query_quotes_the_request_uri_and_formats_the_timeout():
    cmd = fpm.fcgi_command("/r/www-1-status.sock", "/fpm-status", "/fpm-status",
                             query="json", timeout=2.5)
    assert cmd.startswith("timeout 2.5 env -i ")
    assert "QUERY_STRING=json 'REQUEST_URI=/fpm-status?json'" in cmd


def test_fcgi_request_keeps_a_script_filename_with_spaces_as_one_word():
    cmd = fpm.fcgi_command("/srv/a b/run/www-1.sock", "/health.php",
                             PurePosixPath("/srv/a b/www/current/health.php"))
    words = shlex.split(cmd)
    assert "SCRIPT_FILENAME=/srv/a b/www/current/health.php" in words
    assert words[-1] == "/srv/a b/run/www-1.sock"


def test_apache_is_tested_with_apache2ctl_and_driven_through_systemd():
    assert apache_site.apache_test() == "apache2ctl configtest"
    assert apache_site.apache_modules_loaded() == "cat /etc/apache2/mods-enabled/*.load 2>/dev/null"
    assert apache_site.apache_ctl("start") == "systemctl start --quiet apache2.service"
    assert apache_site.apache_ctl("reload") == "systemctl reload --quiet apache2.service"
    assert apache_site.apache_ctl("enable") == "systemctl enable --quiet apache2.service"


@pytest.mark.parametrize("action", ["restart", "stop", "graceful", "start; reboot"])
def test_apache_ctl_refuses_actions_other_than_start_reload_enable(action):
    with pytest.raises(ValueError):
        apache_site.apache_ctl(action)


def test_has_systemd_is_sd_booteds_own_test():
    assert shell.has_systemd() == "test -d /run/systemd/system"


def test_daemon_reload_and_disable_are_plain_systemctl_calls():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert shell.daemon_reload() == "systemctl daemon-reload"
    assert fpm.disable_command(layout, 2, sudo=False) == (
        "systemctl disable --no-reload --quiet fpm-fleet-www@2.service")


def test_read_current_release_reads_the_symlink():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert fpm.current_release_command(layout) == (
        "readlink -- /srv/fpm-fleet/www/current.release")


# --- sections ----------------------------------------------------------------------------------

def test_sections_roundtrip_through_sh_into_split_sections(sh):
    cmd = shell.sections([("one", "echo a; echo b"),
                          ("two words", "printf 'no trailing newline'"),
                          ("empty", "true"),
                          ("failing", "echo partial; false")])
    result = sh(cmd)
    assert shell.split_sections(result.stdout) == {
        "one": ("a\nb", 0), "two words": ("no trailing newline", 0), "empty": ("", 0),
        "failing": ("partial", 1)}


def test_sections_from_at_once_from_run_side_by_side_after_those_before(sh, tmp_path):
    """The first part runs alone (it makes the file both others read); the two after it run
    at the same time: 0.4 s each, well under 0.8 s together. Outputs and exit statuses come
    out as if they had run in turn, and the temporary directory is gone."""
    flag, scratch = tmp_path / "first-done", tmp_path / "tmp"
    scratch.mkdir()
    started = time.monotonic()
    result = sh(f"export TMPDIR={scratch}; " + shell.sections(
        [("first", f"sleep 0.1; touch {flag}; echo a"),
         ("slow", f"sleep 0.4; cat {flag} && echo b"),
         ("failing", f"sleep 0.4; test -e {flag} && echo c; false")], at_once_from=1))
    assert time.monotonic() - started < 0.75
    assert shell.split_sections(result.stdout) == {
        "first": ("a", 0), "slow": ("b", 0), "failing": ("c", 1)}
    assert list(scratch.iterdir()) == []


def test_sections_run_in_turn_when_fewer_than_two_would_run_at_once():
    parts = [("a", "echo 1"), ("b", "echo 2")]
    assert shell.sections(parts, at_once_from=1) == shell.sections(parts)
    assert "mktemp" in shell.sections(parts, at_once_from=0)


def test_split_sections_ignores_output_before_the_first_marker():
    text = (f"noise\n{shell.SECTION} a\n1\n{shell.SECTION_EXIT} 0\n{shell.SECTION} b\n2\n"
            f"{shell.SECTION_EXIT} 3\n")
    assert shell.split_sections(text) == {"a": ("1", 0), "b": ("2", 3)}


def test_a_section_cut_short_has_no_exit_status():
    assert shell.split_sections(f"{shell.SECTION} a\n1\n") == {"a": ("1", -1)}


def test_split_sections_of_plain_text_is_empty():
    assert shell.split_sections("no markers here\n") == {}


# --- mountinfo escaping ------------------------------------------------------------------------

def test_mountinfo_escape_writes_space_tab_newline_backslash_as_octal():
    assert fpm.mountinfo_escape("/a b\tc\nd\\e") == "/a\\040b\\011c\\012d\\134e"


@pytest.mark.parametrize("path", ["/srv/plain", "/srv/a b", "/x\\040y", "/t\tn\nb\\"])
def test_mountinfo_escape_and_unescape_roundtrip(path):
    assert fpm.unescape_mountinfo(fpm.mountinfo_escape(path)) == path


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


@pytest.mark.parametrize(("state", "running"), [("active", True), ("inactive", False),
                                                ("failed", False)])
def test_apache_running_is_true_only_for_an_active_apache2_service(fake_systemd, state,
                                                                   running):
    fake_systemd.unit("apache2.service", state)
    assert (fake_systemd.run(apache_site.apache_running()).returncode == 0) is running


def test_enable_units_enables_and_prints_only_units_not_enabled_yet(fake_systemd):
    fake_systemd.unit("fpm-fleet-www@1.service", enabled=True)
    units = ["fpm-fleet-www@1.service", "fpm-fleet-www@2.service", "fpm-fleet-api@1.service"]
    first = fake_systemd.run(shell.enable_units(units))
    assert (first.returncode, first.stdout.split()) == (
        0, ["fpm-fleet-www@2.service", "fpm-fleet-api@1.service"])
    assert all(fake_systemd.enabled(u) for u in units)
    again = fake_systemd.run(shell.enable_units(units))
    assert (again.returncode, again.stdout) == (0, "")


def test_probe_tools_prints_one_line_per_tool_with_path_or_dash(sh):
    lines = sh(shell.probe_tools()).stdout.splitlines()
    tools = dict(line.split("\t") for line in lines)
    assert set(tools) >= {"systemctl", "cgi-fcgi", "curl", "flock", "sha256sum", "apache2"}
    assert "unshare" not in tools and "mount" not in tools  # systemd pins releases now
    assert tools["sha256sum"].endswith("/sha256sum")
    assert all(v == "-" or v.startswith("/") for v in tools.values())


# --- quoting: nothing injected ever runs -------------------------------------------------------

def test_shell_builders_never_execute_metacharacters_in_paths(
        sh, fake_systemd, evil_layout, pwned):
    lay = evil_layout
    evil = "x;$(touch pwned)`touch pwned`'\""
    fake_systemd.unit(lay.unit(1), "active", main_pid=1)
    fake_systemd.processes((1, "php-fpm: pool www-1"))
    Path(lay.current_release).symlink_to(lay.release(evil))
    commands = [
        shell.checksums([lay.fpm_conf(1), lay.dir / evil]),
        fpm.current_release_command(lay),
        fpm.probe_command(lay, [1, 2]),
        fpm.stop_command(lay, 1, sudo=False),
        fpm.start_command(lay, 1, evil, sudo=False),
        fpm.fcgi_command(lay.sock(1), evil, lay.current / evil, query=evil, timeout=1),
        balancer.xml_command(f"http://127.0.0.1:9/{evil}"),
        balancer.set_command(f"http://127.0.0.1:9/{evil}", evil, evil, evil, {"D": 1}),
        shell.install_checked([lay.conf / evil], "true"),
        shell.as_root(fpm.current_release_command(lay), sudo=False),
        fpm.connections_command(lay.sock(1)),
    ]
    for cmd in commands:
        fake_systemd.run(cmd)
        assert pwned() == [], cmd
    assert f"systemctl start {lay.unit(1)}" in fake_systemd.calls()  # the evil name matched
    sh(shell.write_stdin(lay.conf / evil), stdin=b"data")
    assert pwned() == []
    assert (Path(lay.conf) / evil).read_bytes() == b"data"


def test_sections_quote_their_names(sh, pwned):
    out = sh(shell.sections([("$(touch pwned)", "echo 1")])).stdout
    assert pwned() == []
    assert shell.split_sections(out) == {"$(touch pwned)": ("1", 0)}


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
        result = sh(fpm.fcgi_command(fcgi_socket, "/health.php",
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


# --- replica services: probe, stop and start against a stand-in systemctl and ps -----------

def _title(layout: Layout, n: int) -> str:
    return fpm.FPM_MASTER_TITLE.format(conf=layout.fpm_conf(n))


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


def _spawn(masters: list[subprocess.Popen[bytes]], title: str,
           argv: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
    """A process titled `title` (run through `argv`, a wrapper such as unshare, if given)."""
    proc = subprocess.Popen([*argv, "bash", "-c", 'exec -a "$0" sleep 30', title])
    masters.append(proc)
    _wait_for_title(proc.pid, title)
    return proc


WORKER = "php-fpm: pool www-1"


def test_probe_prints_eight_fields_for_a_live_master_of_an_active_service(
        fake_systemd, layout, masters):
    master = _spawn(masters, _title(layout, 1))
    Path(layout.pid(1)).write_text(f"{master.pid}\n")
    fake_systemd.unit(layout.unit(1), "active", main_pid=master.pid)
    fake_systemd.age(master.pid, 42)
    fake_systemd.processes((1, _title(layout, 1)), (master.pid, WORKER), (master.pid, WORKER))
    result = fake_systemd.run(fpm.probe_command(layout, [1]))
    assert result.stdout.splitlines() == [
        f"1\t{master.pid}\tS\t42\t{_title(layout, 1)}\t-\tactive\t0"]
    proc = fpm.parse_probe(result.stdout)[1]
    assert proc.runs_master(layout)
    assert proc.pinned is None  # nothing is mounted on current/ in this namespace


def test_probe_of_a_replica_without_master_prints_dashes_and_the_service_state(
        fake_systemd, layout):
    Path(layout.pid(3)).write_text("garbage\n")
    fake_systemd.unit(layout.unit(2), "inactive")
    fake_systemd.unit(layout.unit(3), "activating")
    result = fake_systemd.run(fpm.probe_command(layout, [2, 3]))
    assert result.stdout.splitlines() == ["2\t-\t-\t-\t-\t-\tinactive\t0",
                                          "3\t-\t-\t-\t-\t-\tactivating\t0"]
    assert not any(p.alive for p in fpm.parse_probe(result.stdout).values())
    # one systemctl for the whole pool: each costs a D-Bus round trip on the host
    assert fake_systemd.calls() == [f"systemctl is-active {layout.unit(2)} {layout.unit(3)}"]


def test_probe_counts_the_replicas_workers_outside_its_live_master_as_strays(
        fake_systemd, layout, masters):
    # a master killed with SIGKILL leaves its workers serving; PID 1 adopts them
    master = _spawn(masters, _title(layout, 1))
    Path(layout.pid(1)).write_text(f"{master.pid}\n")
    fake_systemd.unit(layout.unit(1), "active", main_pid=master.pid)
    fake_systemd.unit(layout.unit(2), "activating")
    fake_systemd.processes((master.pid, WORKER), (1, WORKER), (1, WORKER),
                           (1, "php-fpm: pool www-11"), (1, "php-fpm: pool www-2"),
                           (1, f"vim {WORKER}"))
    procs = fpm.parse_probe(fake_systemd.run(fpm.probe_command(layout, [1, 2])).stdout)
    assert (procs[1].strays, procs[2].strays) == (2, 1)
    assert procs[1].service == "active" and procs[2].service == "activating"


def test_stop_of_an_inactive_service_without_strays_is_not_running_and_stops_nothing(
        fake_systemd, layout):
    fake_systemd.unit(layout.unit(1), "inactive", result="timeout")  # an old stop's result
    fake_systemd.processes((1, "php-fpm: pool www-2"), (1, "php-fpm: pool www-11"))
    result = fake_systemd.run(fpm.stop_command(layout, 1, sudo=False))
    assert (result.returncode, result.stdout.split()) == (0, ["not-running"])
    assert not any(c.startswith("systemctl stop") for c in fake_systemd.calls())


def test_stop_of_an_active_service_stops_it_through_systemd(fake_systemd, layout):
    fake_systemd.unit(layout.unit(1), "active", main_pid=4242)
    fake_systemd.processes((1, _title(layout, 1)), (4242, WORKER), (4242, WORKER))
    result = fake_systemd.run(fpm.stop_command(layout, 1, sudo=False))
    assert (result.returncode, result.stdout.split()) == (0, ["stopped"])
    assert f"systemctl stop {layout.unit(1)}" in fake_systemd.calls()
    assert fake_systemd.state_of(layout.unit(1)) == "inactive"


def test_stop_says_escalated_when_systemd_hit_the_stop_timeout(fake_systemd, layout):
    fake_systemd.unit(layout.unit(1), "active", main_pid=4242)
    fake_systemd.on_stop(layout.unit(1), "timeout")  # SIGQUIT was not enough: SIGKILL
    result = fake_systemd.run(fpm.stop_command(layout, 1, sudo=False))
    assert (result.returncode, result.stdout.split()) == (0, ["escalated", "stopped"])


def test_stop_of_a_dead_masters_workers_counts_and_stops_them(fake_systemd, layout):
    fake_systemd.unit(layout.unit(1), "inactive")
    fake_systemd.processes((1, WORKER), (1, WORKER), (1, "php-fpm: pool www-11"))
    result = fake_systemd.run(fpm.stop_command(layout, 1, sudo=False))
    assert (result.returncode, result.stdout.split()) == (0, ["strays", "2", "stopped"])
    assert f"systemctl stop {layout.unit(1)}" in fake_systemd.calls()


def test_stop_counts_old_workers_beside_a_restarted_master_as_strays(fake_systemd, layout):
    # Restart=always started a new master; the dead one's worker still finishes its request
    fake_systemd.unit(layout.unit(1), "active", main_pid=5000)
    fake_systemd.processes((5000, WORKER), (5000, WORKER), (1, WORKER))
    result = fake_systemd.run(fpm.stop_command(layout, 1, sudo=False))
    assert result.stdout.split() == ["strays", "1", "stopped"]


def _point_current_release(layout: Layout, release: str) -> None:
    Path(layout.release(release)).mkdir(exist_ok=True)
    Path(layout.current_release).symlink_to(f"releases/{release}")


def test_start_enables_and_starts_the_service_current_release_names(fake_systemd, layout):
    _point_current_release(layout, "v1")
    fake_systemd.unit(layout.unit(1), "failed")
    result = fake_systemd.run(fpm.start_command(layout, 1, "v1", sudo=False))
    assert result.returncode == 0, result.stderr
    unit = layout.unit(1)
    assert fake_systemd.calls() == [f"systemctl reset-failed {unit}",
                                    f"systemctl enable --no-reload --quiet {unit}",
                                    f"systemctl start {unit}"]
    assert fake_systemd.state_of(unit) == "active"
    assert fake_systemd.enabled(unit)


def test_start_refuses_a_release_current_release_does_not_name_with_exit_3(
        fake_systemd, layout):
    _point_current_release(layout, "v1")
    Path(layout.release("v2")).mkdir()
    result = fake_systemd.run(fpm.start_command(layout, 1, "v2", sudo=False))
    assert result.returncode == 3
    assert "current.release does not name v2" in result.stderr
    assert fake_systemd.calls() == []  # systemd would have pinned v1


def test_start_without_current_release_is_refused_with_exit_3(fake_systemd, layout):
    Path(layout.release("v1")).mkdir()
    result = fake_systemd.run(fpm.start_command(layout, 1, "v1", sudo=False))
    assert result.returncode == 3
    assert fake_systemd.calls() == []


def test_a_failed_start_exits_1_with_the_units_last_log_lines(fake_systemd, layout):
    _point_current_release(layout, "v1")
    fake_systemd.start_fails(layout.unit(1), "ERROR: unable to bind listening socket\n")
    result = fake_systemd.run(fpm.start_command(layout, 1, "v1", sudo=False))
    assert result.returncode == 1
    assert "unable to bind listening socket" in result.stderr
    assert fake_systemd.calls()[-1] == (
        f"journalctl --no-pager -o cat -n 5 -u {layout.unit(1)}")


def test_a_set_start_refused_for_the_start_limit_is_reset_and_tried_once_more(fake_systemd,
                                                                              layout):
    """Surges in quick succession start each set every other rollout: systemd's start limit
    (against crash loops) refuses the eleventh start within a minute. A deliberate start is
    reset and tried again; a start that fails for another reason is not."""
    _point_current_release(layout, "v1")
    fake_systemd.start_limit_hit(layout.unit(3))
    fake_systemd.start_fails(layout.unit(4), "ERROR: unable to bind listening socket\n")
    result = fake_systemd.run(fpm.start_set_command(layout, [3, 4], "v1", sudo=False,
                                                    enable=False, reset=()))
    assert sorted(result.stdout.split("\n")[:2]) == ["3 ok -", "4 failed"], result.stdout
    calls = fake_systemd.calls()
    assert calls.count(f"systemctl start {layout.unit(3)}") == 2
    assert calls.count(f"systemctl reset-failed {layout.unit(3)}") == 1
    assert calls.count(f"systemctl start {layout.unit(4)}") == 1
    assert f"systemctl reset-failed {layout.unit(4)}" not in calls


# --- pinning: the release bound on current/ in the master's own mount namespace (root only) -----

def _can_pin() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "true"],
                           capture_output=True, check=False)
    return probe.returncode == 0


needs_pinning = pytest.mark.skipif(not _can_pin(), reason="needs root and unshare --mount")

# What the unit's BindReadOnlyPaths=current.release:current does before ExecStart.
PIN = 'mount --bind -o ro -- "$0" "$1" && exec -a "$2" sleep 30'


def _pinned_master(masters: list[subprocess.Popen[bytes]], base: Path) -> Layout:
    lay = Layout(dir=PurePosixPath(base / "www"), pool="www")
    for d in lay.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    _point_current_release(lay, "v1")
    title = _title(lay, 1)
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "bash",
                             "-c", PIN, str(lay.current_release), str(lay.current), title])
    masters.append(proc)
    _wait_for_title(proc.pid, title)
    Path(lay.pid(1)).write_text(f"{proc.pid}\n")
    return lay


@needs_pinning
def test_probe_sees_the_release_pinned_in_the_masters_namespace_and_its_deletion(
        fake_systemd, tmp_path, masters):
    lay = _pinned_master(masters, tmp_path / "srv")
    fake_systemd.unit(lay.unit(1), "active")
    proc = fpm.parse_probe(fake_systemd.run(fpm.probe_command(lay, [1])).stdout)[1]
    assert proc.runs_master(lay)
    assert (proc.release, proc.release_deleted) == ("v1", False)
    assert not any(Path(lay.current).iterdir())  # the bind mount never leaked into ours

    shutil.rmtree(lay.release("v1"))
    gone = fpm.parse_probe(fake_systemd.run(fpm.probe_command(lay, [1])).stdout)[1]
    assert (gone.release, gone.release_deleted) == ("v1", True)


@needs_pinning
def test_probe_finds_the_pinned_release_under_a_root_with_a_space(
        fake_systemd, tmp_path, masters):
    lay = _pinned_master(masters, tmp_path / "fleet root")
    proc = fpm.parse_probe(fake_systemd.run(fpm.probe_command(lay, [1])).stdout)[1]
    assert proc.runs_master(lay)
    assert proc.release == "v1"


def test_open_connections_counts_connected_entries_of_that_socket_only(sh, tmp_path):
    sock = PurePosixPath("/srv/www/run/www-1.sock")
    assert fpm.connections_command(sock).endswith("\nopen_connections /srv/www/run/www-1.sock")
    table = tmp_path / "unix"
    table.write_text("Num       RefCount Protocol Flags    Type St Inode Path\n"
                     "0: 00000002 00000000 00010000 0001 01 11 /srv/www/run/www-1.sock\n"
                     "0: 00000003 00000000 00000000 0001 03 12 /srv/www/run/www-1.sock\n"
                     "0: 00000003 00000000 00000000 0001 03 13 /srv/www/run/www-2.sock\n"
                     "0: 00000003 00000000 00000000 0001 03 14 /srv/www/run/www-1.sock\n")
    out = sh(shell.with_replica_lib(f"open_connections {sock} {table}")).stdout
    assert out.strip() == "2"


def test_connections_by_replica_counts_each_replicas_socket_from_the_kernels_table(
        sh, tmp_path):
    """Run for real against this machine's /proc/net/unix: replica 1's socket listens with
    one connection accepted and one queued, replica 2's listens idle, replica 3's is gone
    (stopped)."""
    lay = Layout(dir=PurePosixPath(tmp_path), pool="www")
    Path(lay.sock(1)).parent.mkdir(parents=True)
    listeners, clients = [], []
    for n in (1, 2):
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(lay.sock(n)))
        server.listen(4)
        listeners.append(server)
    try:
        for _ in range(2):
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(lay.sock(1)))
            clients.append(client)
        accepted, _ = listeners[0].accept()
        clients.append(accepted)
        out = sh(fpm.connections_by_replica_command(lay, [1, 2, 3])).stdout
    finally:
        for s in listeners + clients:
            s.close()
    assert out == "1 2\n2 0\n3 0\n"
    assert fpm.parse_counts(out) == {1: 2, 2: 0, 3: 0}


def test_connection_counts_leave_out_a_replica_without_a_readable_line():
    assert fpm.parse_counts("1 3\n2 \nnoise\n3 x\n4 0\n") == {1: 3, 4: 0}


def test_system_apache_enables_every_module_the_site_uses_rewrite_included():
    assert apache_site.apache_enable_site() == (
        "a2enmod -q proxy proxy_fcgi proxy_balancer lbmethod_bybusyness lbmethod_byrequests "
        "slotmem_shm authz_host rewrite auth_basic authn_core authn_file authz_user "
        ">/dev/null && a2ensite -q fpm-fleet >/dev/null")


# --- fab check: the pool through Apache, and the listen port -----------------------------------

def test_vhost_request_asks_apache_with_the_pools_host_header_only_once_a_release_is_active():
    lay = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert apache_site.vhost_request(lay, "http://127.0.0.1:8088/health.php", "www.example") == (
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
    ok = sh(apache_site.vhost_request(layout, f"http://127.0.0.1:{port}/health.php", "www.example"))
    missing = sh(apache_site.vhost_request(layout, f"http://127.0.0.1:{port}/nope", "www.example"))
    assert (ok.stdout, missing.stdout) == ("200", "404")
    assert hosts == ["www.example", "www.example"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_vhost_request_prints_000_and_the_reason_when_nothing_answers(sh, layout):
    Path(layout.current_release).symlink_to("releases")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        result = sh(apache_site.vhost_request(layout, f"http://127.0.0.1:{port}/", "www"))
    assert result.stdout == "000"
    assert "Failed to connect" in result.stderr or "Couldn't connect" in result.stderr


def test_vhost_request_before_the_first_deploy_requests_nothing(sh, layout):
    result = sh(apache_site.vhost_request(layout, "http://127.0.0.1:9/health.php", "www"))
    assert (result.returncode, result.stdout.strip()) == (0, apache_site.NO_RELEASE)


def test_tcp_listening_reads_the_kernels_table_for_the_port_in_hex():
    assert apache_site.tcp_listening(8088) == (
        "cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=1F98 "
        "'$4 == \"0A\" && substr($2, index($2, \":\") + 1) == p {f = 1} END {exit !f}'")


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_tcp_listening_is_true_only_while_a_socket_listens_on_the_port(sh, family):
    address = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family) as s:
        s.bind((address, 0))
        port = s.getsockname()[1]
        assert sh(apache_site.tcp_listening(port)).returncode == 1  # bound is not listening
        s.listen()
        assert sh(apache_site.tcp_listening(port)).returncode == 0
    assert sh(apache_site.tcp_listening(port)).returncode == 1


def test_enabling_at_boot_leaves_an_enabled_unit_alone(fake_systemd, layout):
    fake_systemd.unit(layout.unit(1), enabled=True)
    fake_systemd.unit(layout.unit(2))
    for n in (1, 2):
        assert fake_systemd.run(fpm.enable_command(layout, n, sudo=False)).returncode == 0
    assert f"systemctl enable --no-reload --quiet {layout.unit(1)}" not in fake_systemd.calls()
    assert f"systemctl enable --no-reload --quiet {layout.unit(2)}" in fake_systemd.calls()
    assert fake_systemd.enabled(layout.unit(2))


def test_then_runs_the_second_only_after_the_first_succeeded_whatever_either_holds() -> None:
    # each side may hold its own `;` and `exit`: neither leaks into the other
    ok = subprocess.run(["sh", "-c", shell.then("true; echo a", "echo b; exit 3")],
                        capture_output=True, text=True)
    assert (ok.stdout, ok.returncode) == ("a\nb\n", 3)
    failed = subprocess.run(["sh", "-c", shell.then("false; rc=$?; exit $rc", "echo b")],
                            capture_output=True, text=True)
    assert (failed.stdout, failed.returncode) == ("", 1)
