"""nginx as a host's web server: the inventory's `web`, the members' states read from the
running nginx (parser), the helper that changes them (run for real in sh, with stand-in
nginx, systemctl and curl), the driver's read-back check, setup's rendering and sudoers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_sh
from fakes import FakeRunner, replica_of

from fpm_fleet import render
from fpm_fleet.core.errors import RolloutError
from fpm_fleet.core.inventory import Fleet
from fpm_fleet.core.resources import SHELL_SCRIPTS
from fpm_fleet.host.layout import NGINX_SOCKET
from fpm_fleet.host.pool import HostPool
from fpm_fleet.remote import shell
from fpm_fleet.web import nginx, server, upstream


def nginx_fleet(data: dict[str, Any], build_fleet: Any, **pool: Any) -> Fleet:
    data["defaults"]["web"] = "nginx"
    data["pools"]["www"].update(pool)
    fleet: Fleet = build_fleet(data)
    return fleet


# --- inventory --------------------------------------------------------------------------

def test_web_is_apache_unless_said(inventory_data, build_fleet):
    host = build_fleet(inventory_data).hosts[0]
    assert host.web == "apache" and host.web_server == host.apache


def test_web_nginx_in_defaults_and_apache_for_one_host(inventory_data, build_fleet):
    inventory_data["defaults"]["web"] = "nginx"
    inventory_data["defaults"]["nginx"] = {"listen": "*:8088", "user": "nginx"}
    inventory_data["hosts"][1]["web"] = "apache"
    web1, web2 = build_fleet(inventory_data).hosts
    assert (web1.web, web1.web_server.port, web1.web_server.user) == ("nginx", 8088, "nginx")
    assert (web2.web, web2.web_server.port) == ("apache", 80)


def test_an_unknown_web_server_is_refused(inventory_data, config_error):
    inventory_data["hosts"][0]["web"] = "lighttpd"
    assert "hosts.web1.web: must be 'apache' or 'nginx'" in config_error(inventory_data)


def test_a_typo_in_the_nginx_table_names_the_key(inventory_data, config_error):
    inventory_data["defaults"]["nginx"] = {"lisen": "*:80"}
    assert "defaults.nginx.lisen: unknown key; did you mean 'listen'?" in \
        config_error(inventory_data)


# --- the members as the running nginx answers them ---------------------------------------

def pool_at(fleet: Fleet, runner: Any = None) -> HostPool:
    return HostPool(runner, fleet.hosts[0], fleet.pools[0])


def test_the_answer_reads_as_a_balancer_with_apaches_flags(inventory_data, build_fleet):
    at = pool_at(nginx_fleet(inventory_data, build_fleet, strategy="surge"))
    bal = upstream.parse(at, "pool=www 1=up 2=drain 3=disable 4=park\n")
    assert [(m.identity, m.status, m.enabled, m.out) for m in bal.members] == [
        ("fcgi://www-1", "Ok", True, False), ("fcgi://www-2", "Drn Ok", False, True),
        ("fcgi://www-3", "Drn Dis Ok", False, True), ("fcgi://www-4", "Drn Stby Ok", False, True)]
    assert upstream.states(bal, at.pool) == {1: "up", 2: "drain", 3: "disable", 4: "park"}


@pytest.mark.parametrize("answer", ["pool=shop 1=up", "", "<html>", "pool=www 1=maybe",
                                    "pool=www x=up"])
def test_an_answer_for_another_pool_or_unreadable_is_refused(inventory_data, build_fleet,
                                                             answer):
    at = pool_at(nginx_fleet(inventory_data, build_fleet))
    with pytest.raises(ValueError):
        upstream.parse(at, answer)


def test_the_read_asks_the_members_socket_with_the_pools_name_until_it_answers(
        inventory_data, build_fleet, tmp_path):
    at = pool_at(nginx_fleet(inventory_data, build_fleet))
    curl = (f"curl -sS --fail --max-time 2 --unix-socket {NGINX_SOCKET} -H 'Host: www' "
            "http://fpm-fleet/members")
    assert curl in upstream.read(at).text
    fake = tmp_path / "bin"
    fake.mkdir()
    # a curl that fails twice (nginx restarting), then answers
    (fake / "curl").write_text(f"#!/bin/sh\nn=$(cat {tmp_path}/n 2>/dev/null || echo 0)\n"
                               f"echo $((n + 1)) > {tmp_path}/n\n[ $n -ge 2 ] || exit 7\n"
                               "echo 'pool=www 1=up 2=up'\n")
    (fake / "curl").chmod(0o755)
    done = run_sh(upstream.read(at).text, tmp_path, path_first=fake)
    assert (done.returncode, done.stdout) == (0, "pool=www 1=up 2=up\n")


def test_a_change_sends_every_state_to_the_helper_through_sudo(inventory_data, build_fleet):
    inventory_data["defaults"]["user"] = "deploy"
    fleet = nginx_fleet(inventory_data, build_fleet)
    assert upstream.apply_command(fleet.pools[0], {2: "drain", 1: "up"}, True) == (
        "printf '%s\\n' '1 up\n2 drain' | "
        "sudo -n -- /usr/local/lib/fpm-fleet/nginx-members www")
    with pytest.raises(ValueError):
        upstream.stdin_lines({1: "up; reboot"})


def test_a_fresh_pool_serves_from_its_first_set(inventory_data, build_fleet):
    surge = nginx_fleet(inventory_data, build_fleet, strategy="surge").pools[0]
    assert upstream.initial(surge) == {1: "up", 2: "up", 3: "disable", 4: "disable"}


# --- the driver -------------------------------------------------------------------------

def test_a_flip_is_one_reload_and_reads_both_sets_back(inventory_data, build_fleet):
    fleet = nginx_fleet(inventory_data, build_fleet, strategy="surge")
    runner = FakeRunner(fleet.hosts[0]).on("read nginx members", "pool=www 1=up 2=up 3=disable "
                                           "4=disable").on("set nginx members",
                                                           "pool=www 1=drain 2=drain 3=up 4=up")
    at = pool_at(fleet, runner)
    bal, members, notes = server.flip(at, at.replicas([3, 4]), at.replicas([1, 2]))
    assert [members[n].status for n in (3, 4)] == ["Ok", "Ok"] and notes == {}
    assert [m.status for m in bal.members[:2]] == ["Drn Ok", "Drn Ok"]
    assert runner.whats.count("set nginx members www-1 drain, www-2 drain, www-3 up, "
                              "www-4 up") == 1


def test_the_retire_job_disables_the_old_set_through_the_helper(inventory_data, build_fleet):
    inventory_data["defaults"]["user"] = "deploy"
    fleet = nginx_fleet(inventory_data, build_fleet, strategy="surge")
    at = pool_at(fleet)
    bal = upstream.parse(at, "pool=www 1=drain 2=drain 3=up 4=up")
    assert server.disable_command(at, bal, at.replicas([1, 2])) == (
        "printf '%s\\n' '1 disable\n2 disable\n3 up\n4 up' | "
        "sudo -n -- /usr/local/lib/fpm-fleet/nginx-members www")


def test_a_change_the_running_nginx_does_not_show_fails(inventory_data, build_fleet):
    fleet = nginx_fleet(inventory_data, build_fleet)
    runner = FakeRunner(fleet.hosts[0]).on("read nginx members", "pool=www 1=up 2=up") \
        .on("set nginx members", "pool=www 1=up 2=up")
    with pytest.raises(RolloutError, match="nginx runs fcgi://www-2 as Ok after the reload"):
        nginx.drain(replica_of(runner, fleet.pools[0], 2))


def test_a_refused_change_says_why(inventory_data, build_fleet):
    fleet = nginx_fleet(inventory_data, build_fleet)
    runner = FakeRunner(fleet.hosts[0]).on("read nginx members", "pool=www 1=up 2=up") \
        .on("set nginx members", (3, "", "nginx -t refused the new upstream of pool www"))
    with pytest.raises(RolloutError, match="nginx refused the change: nginx -t refused"):
        nginx.drain(replica_of(runner, fleet.pools[0], 2))


# --- rendering and privileges -----------------------------------------------------------

def test_the_deploy_user_may_run_the_helper_for_each_pool_and_nothing_of_apache(
        inventory_data, build_fleet):
    inventory_data["defaults"]["user"] = "deploy"
    fleet = nginx_fleet(inventory_data, build_fleet)
    lines = render.sudo_commands(fleet, fleet.hosts[0])
    assert "/usr/local/lib/fpm-fleet/nginx-members www" in lines
    assert not [line for line in lines if "apache" in line]


def test_the_upstream_template_has_a_placeholder_per_slot(inventory_data, build_fleet):
    fleet = nginx_fleet(inventory_data, build_fleet, strategy="surge", retry=2)
    template, helper = render.nginx_templates(fleet, fleet.hosts[0])
    assert template.text.count("max_fails=1 fail_timeout=2s @STATE_") == 4
    assert "upstream fpm_fleet_www {" in template.text and helper.mode == "0755"


def test_the_site_pins_php_and_refuses_source_and_dotfiles(inventory_data, build_fleet):
    fleet = nginx_fleet(inventory_data, build_fleet, document_root="public",
                        front_controller="index.php")
    site = render.nginx_files(fleet, fleet.hosts[0])[1].text
    assert "root /srv/fpm-fleet/www/current.release/public;" in site
    assert "fastcgi_param SCRIPT_FILENAME /srv/fpm-fleet/www/current/public$fpm_fleet_script;" \
        in site
    assert "root /srv/fpm-fleet/www/previous.release/public;" in site
    assert "fastcgi_param SCRIPT_FILENAME /srv/fpm-fleet/www/current/public/index.php;" in site
    assert 'location ~ "/\\.(?!well-known(/|$))"' in site
    assert "fastcgi_keep_conn" not in site and "open_file_cache" not in site.replace(
        "No open_file_cache", "")


def test_replica_sockets_and_boot_order_follow_the_hosts_web_server(inventory_data,
                                                                    build_fleet):
    inventory_data["defaults"]["nginx"] = {"group": "nginx"}
    fleet = nginx_fleet(inventory_data, build_fleet)
    host, pool = fleet.hosts[0], fleet.pools[0]
    assert "listen.group = nginx" in render.fpm_files(host, pool)[0].text
    assert "Before=nginx.service" in render.unit_file(host, pool).text


# --- the helper, run for real with stand-ins ---------------------------------------------

FAKE_NGINX = """#!/bin/sh
[ ! -e "$FAKE/nginx-t-fails" ] || { echo "nginx: [emerg] broken" >&2; exit 1; }
"""
FAKE_SYSTEMCTL = """#!/bin/sh
if [ "$1" = show ]; then  # MainPID: the master named in $FAKE/master, if any
    cat "$FAKE/master" 2>/dev/null || echo 0; exit 0
fi
[ ! -e "$FAKE/reload-fails" ] || { echo "nginx.service is not active" >&2; exit 1; }
echo "$*" >> "$FAKE/calls"
sed -n 's/.*return 200 "\\(.*\\)\\\\n";/\\1/p' "$FAKE/etc-nginx/www.conf" > "$FAKE/running"
# an old worker (its pid in $FAKE/worker) handles the master's QUIT a while after the new
# states already answer: it goes, and says so
if [ -e "$FAKE/worker" ]; then
    (sleep 0.3; kill "$(cat "$FAKE/worker")"; touch "$FAKE/old-worker-gone") \
        </dev/null >/dev/null 2>&1 &
fi
"""
FAKE_CURL = """#!/bin/sh
cat "$FAKE/running" 2>/dev/null
"""


@pytest.fixture
def helper(tmp_path: Path, inventory_data, build_fleet) -> Any:
    """The helper with its paths moved into tmp_path; nginx, systemctl (reload: the running
    states become the file's), curl and flock stand-ins first on PATH."""
    fleet = nginx_fleet(inventory_data, build_fleet)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("nginx", FAKE_NGINX), ("systemctl", FAKE_SYSTEMCTL),
                       ("curl", FAKE_CURL), ("flock", "#!/bin/sh\n")):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "templates").mkdir()
    template = render.nginx_templates(fleet, fleet.hosts[0])[0].text
    (tmp_path / "templates" / "www.upstream.in").write_text(template)
    script = (SHELL_SCRIPTS / "nginx-members.sh").read_text() \
        .replace("/etc/fpm-fleet/nginx", str(tmp_path / "templates")) \
        .replace("/etc/nginx/fpm-fleet", str(tmp_path / "etc-nginx")) \
        .replace("/run/fpm-fleet-nginx.lock", str(tmp_path / "lock"))
    (tmp_path / "helper").write_text(script)

    def run(stdin: str, *args: str) -> Any:
        return run_sh(f"FAKE={tmp_path} sh {tmp_path / 'helper'} {' '.join(args)} www",
                      tmp_path, stdin.encode(), path_first=bin_dir)
    return run, tmp_path


def test_helper_writes_tests_reloads_and_prints_the_running_states(helper):
    run, tmp = helper
    done = run("1 up\n2 drain\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "pool=www 1=up 2=drain\n"
    conf = (tmp / "etc-nginx" / "www.conf").read_text()
    assert "www-1.sock max_fails=1 fail_timeout=1s;" in conf
    assert "www-2.sock max_fails=1 fail_timeout=1s down;" in conf
    assert run("1 up\n2 drain\n").returncode == 0
    assert (tmp / "calls").read_text().count("reload") == 1  # unchanged: no second reload


def test_helpers_lock_is_roots_alone_even_when_an_older_helper_left_it_readable(helper):
    """Anyone who can open the lock file can flock it: a PHP script (www-data) holding it
    would stop every change of the members (the security suite tries, on nginx)."""
    run, tmp = helper
    assert run("1 up\n2 up\n").returncode == 0
    assert (tmp / "lock").stat().st_mode & 0o777 == 0o600
    (tmp / "lock").chmod(0o644)
    assert run("1 up\n2 drain\n").returncode == 0
    assert (tmp / "lock").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("stdin", ["1 up\n", "1 up\n2 up\n3 up\n", "1 up\n2 down\n",
                                   "1 up\n1 drain\n2 up\n", "1 up\n2 up; reboot\n",
                                   "1 up\n2 up\nx\n"])
def test_helper_refuses_anything_but_one_known_state_per_slot(helper, stdin):
    run, tmp = helper
    assert run(stdin).returncode == 2
    assert not (tmp / "etc-nginx" / "www.conf").exists()


@pytest.mark.parametrize(("fault", "code", "said"), [
    ("nginx-t-fails", 3, "nothing changed"), ("reload-fails", 4, "is nginx.service running")])
def test_helper_puts_back_a_config_nginx_refuses_or_cannot_load(helper, fault, code, said):
    run, tmp = helper
    assert run("1 up\n2 up\n").returncode == 0
    (tmp / fault).touch()
    failed = run("1 up\n2 drain\n")
    assert failed.returncode == code and said in failed.stderr
    assert "1s down;" not in (tmp / "etc-nginx" / "www.conf").read_text()
    assert (tmp / "calls").read_text().count("reload") == 1


def _worker(title: str) -> subprocess.Popen[bytes]:
    """A child of this test titled like one of nginx's workers (its master: this process)."""
    return subprocess.Popen([title, "30"], executable="/bin/sleep")


def test_helper_returns_once_no_worker_of_the_old_configuration_accepts(helper):
    """After a reload, an old worker may answer the old states for a moment after a new one
    answered the new: a caller reading the members then would write the others back from
    them. The helper waits until each worker that accepted before is gone."""
    run, tmp = helper
    assert run("1 up\n2 up\n").returncode == 0
    worker = _worker("nginx: worker process")
    try:
        (tmp / "master").write_text(f"{os.getpid()}\n")
        (tmp / "worker").write_text(f"{worker.pid}\n")
        done = run("1 up\n2 drain\n")
        assert done.returncode == 0, done.stderr
        assert (tmp / "old-worker-gone").exists()
    finally:
        worker.kill()
        worker.wait()


def test_helper_does_not_wait_for_workers_already_shutting_down(helper):
    run, tmp = helper
    leaving = _worker("nginx: worker process is shutting down")
    try:
        (tmp / "master").write_text(f"{os.getpid()}\n")
        started = time.monotonic()
        done = run("1 up\n2 drain\n")
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 5
    finally:
        leaving.kill()
        leaving.wait()


def test_setup_mode_writes_and_tests_without_a_reload(helper):
    run, tmp = helper
    done = run("1 up\n2 disable\n", "--setup")
    assert done.returncode == 0 and done.stdout.strip().endswith("www.conf")
    assert not (tmp / "calls").exists()
    assert shell.nginx_members("www") == ("/usr/local/lib/fpm-fleet/nginx-members", "www")
