"""tasks.render: the Apache site, one PHP-FPM config per replica, the pool's systemd unit."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from tasks import render
from tasks.errors import ConfigError


@pytest.fixture
def fleet(inventory_data, build_fleet):
    inventory_data["hosts"] = [
        {"name": "sys", "address": "198.18.0.11"},
        {"name": "own", "address": "198.18.0.12", "root": "/srv/h2",
         "apache": {"listen": "198.18.0.12:80", "manager_port": 8082}},
    ]
    inventory_data["pools"] = {"www": {"replicas": 2, "retry": 2},
                               "api": {"replicas": 3, "server_name": "api.example"}}
    return build_fleet(inventory_data)


def site_text(fleet, host_name: str) -> str:
    files = render.apache_files(fleet, fleet.host(host_name))
    return files[-1].text


def blocks(text: str, opener: str, closer: str) -> list[str]:
    """The bodies of every `<opener ...> ... </closer>` block."""
    return re.findall(rf"^\s*<{opener}\b[^>]*>\n(.*?)^\s*</{closer}>", text, re.M | re.S)


# --- Apache ------------------------------------------------------------------------------------

def test_system_mode_renders_only_the_debian_site(fleet):
    files = render.apache_files(fleet, fleet.host("sys"))
    assert [f.path for f in files] == [
        PurePosixPath("/etc/apache2/sites-available/fpm-fleet.conf")]
    assert files[0].mode == "0644"


def test_system_site_adds_the_loopback_listen_for_balancer_manager(fleet):
    assert re.findall(r"^Listen .*$", site_text(fleet, "sys"), re.M) == ["Listen 127.0.0.1:8081"]


def test_every_host_renders_the_site_alone_whatever_its_root_and_listen(fleet):
    files = render.apache_files(fleet, fleet.host("own"))
    assert [f.path for f in files] == [
        PurePosixPath("/etc/apache2/sites-available/fpm-fleet.conf")]


def test_site_listens_only_on_the_hosts_own_loopback_manager_port(fleet):
    # the public port is Debian's ports.conf's; a second `Listen` for it fails at start
    assert re.findall(r"^Listen .*$", site_text(fleet, "own"), re.M) == [
        "Listen 127.0.0.1:8082"]


def test_site_has_one_balancer_per_pool_with_one_member_per_replica(fleet):
    text = site_text(fleet, "sys")
    assert re.findall(r'^<Proxy "(balancer://[^"]+)">', text, re.M) == [
        "balancer://www", "balancer://api"]
    www, api = blocks(text, "Proxy", "Proxy")
    assert re.findall(r"BalancerMember (.*)", www) == [
        '"unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1" retry=2',
        '"unix:/srv/fpm-fleet/www/run/www-2.sock|fcgi://www-2" retry=2']
    assert re.findall(r'BalancerMember "unix:[^|]+\|(fcgi://[^"]+)"', api) == [
        "fcgi://api-1", "fcgi://api-2", "fcgi://api-3"]
    for body in (www, api):
        assert "ProxySet lbmethod=bybusyness" in body
        assert "stickysession" not in body


def test_site_persists_balancer_state_across_graceful(fleet):
    for host in ("sys", "own"):
        assert re.search(r"^BalancerPersist On$", site_text(fleet, host), re.M)


def test_balancer_manager_is_a_loopback_vhost_reachable_only_locally(fleet):
    text = site_text(fleet, "own")
    manager = re.search(r"<VirtualHost 127\.0\.0\.1:8082>\n(.*?)</VirtualHost>", text, re.S)
    assert manager is not None
    body = manager.group(1)
    assert '<Location "/balancer-manager">' in body
    assert "SetHandler balancer-manager" in body
    assert "Require local" in body
    assert "Require all granted" not in body


def test_proxy_rules_live_inside_each_pools_vhost(fleet):
    text = site_text(fleet, "own")
    outside = re.sub(r"<VirtualHost.*?</VirtualHost>", "", text, flags=re.S)
    assert "ProxyPass" not in outside
    vhosts = re.findall(r"<VirtualHost 198\.18\.0\.12:80>\n(.*?)</VirtualHost>", text, re.S)
    assert len(vhosts) == 2
    www, api = vhosts
    assert "ServerName www\n" in www and "ServerName api.example\n" in api
    assert ('ProxyPassMatch "^/(.*\\.php(/.*)?)$" "balancer://www/srv/h2/www/current/$1"'
            in www)
    assert 'ProxyPassMatch "^/$" "balancer://www/srv/h2/www/current/index.php"' in www
    assert '"balancer://api/srv/h2/api/current/$1"' in api
    assert "balancer://www" not in api


def test_static_files_are_served_from_current_release(fleet):
    text = site_text(fleet, "sys")
    assert 'DocumentRoot "/srv/fpm-fleet/www/current.release"' in text
    assert 'DocumentRoot "/srv/fpm-fleet/api/current.release"' in text


def test_system_vhost_uses_the_host_listen_address(fleet):
    assert len(re.findall(r"^<VirtualHost \*:80>$", site_text(fleet, "sys"), re.M)) == 2


# --- PHP-FPM -----------------------------------------------------------------------------------

def ini(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(";"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def test_fpm_files_render_one_config_per_replica_at_conf_pool_n(fleet):
    files = render.fpm_files(fleet.host("sys"), fleet.pool("api"))
    assert [f.path for f in files] == [PurePosixPath(f"/srv/fpm-fleet/api/conf/api-{n}.conf")
                                       for n in (1, 2, 3)]
    assert len({f.text for f in files}) == 3


def test_fpm_config_has_pid_listen_status_listener_and_ping(fleet):
    conf = render.fpm_files(fleet.host("sys"), fleet.pool("www"))[1].text
    values = ini(conf)
    assert "[www-2]" in conf.splitlines()
    assert values["pid"] == '"/srv/fpm-fleet/www/run/www-2.pid"'
    assert values["listen"] == '"/srv/fpm-fleet/www/run/www-2.sock"'
    assert values["pm.status_listen"] == '"/srv/fpm-fleet/www/run/www-2-status.sock"'
    assert values["pm.status_path"] == "/fpm-status"
    assert values["ping.path"] == "/fpm-ping"
    assert values["ping.response"] == "pong"
    assert values["chdir"] == '"/srv/fpm-fleet/www/current"'
    assert "daemonize" not in values  # systemd runs the master in the foreground
    assert values["listen.owner"] == values["listen.group"] == "www-data"
    assert values["user"] == values["group"] == "www-data"


def test_fpm_listen_owner_follows_the_hosts_apache_user(inventory_data, build_fleet):
    inventory_data["defaults"]["apache"].update(user="apache", group="web")
    fleet = build_fleet(inventory_data)
    values = ini(render.fpm_files(fleet.hosts[0], fleet.pools[0])[0].text)
    assert (values["listen.owner"], values["listen.group"]) == ("apache", "web")


def test_fpm_ini_values_are_quoted(inventory_data, build_fleet):
    inventory_data["defaults"]["root"] = "/srv/fpm-fleet"
    fleet = build_fleet(inventory_data)
    values = ini(render.fpm_files(fleet.hosts[0], fleet.pools[0])[0].text)
    assert values["listen"] == '"/srv/fpm-fleet/www/run/www-1.sock"'
    assert values["pid"] == '"/srv/fpm-fleet/www/run/www-1.pid"'
    assert values["chdir"] == '"/srv/fpm-fleet/www/current"'
    assert values["syslog.ident"] == '"fpm-fleet-www-1"'


def test_fpm_logs_to_the_journal_with_one_ident_per_replica(fleet):
    files = render.fpm_files(fleet.host("sys"), fleet.pool("api"))
    values = [ini(f.text) for f in files]
    assert {v["error_log"] for v in values} == {"syslog"}
    assert [v["syslog.ident"] for v in values] == [
        '"fpm-fleet-api-1"', '"fpm-fleet-api-2"', '"fpm-fleet-api-3"']
    # no log file of its own left anywhere: PHP errors go through the master to the journal
    assert not any("log/" in line for f in files for line in f.text.splitlines()
                   if not line.startswith(";"))


def test_fpm_graceful_stop_waits_the_pools_stop_timeout(inventory_data, build_fleet):
    inventory_data["pools"]["www"]["stop_timeout"] = 25
    inventory_data["pools"]["api"] = {"replicas": 2}
    fleet = build_fleet(inventory_data)
    www = ini(render.fpm_files(fleet.hosts[0], fleet.pool("www"))[0].text)
    api = ini(render.fpm_files(fleet.hosts[0], fleet.pool("api"))[0].text)
    assert www["process_control_timeout"] == "25s"
    assert api["process_control_timeout"] == "60s"


@pytest.mark.parametrize("root", ["/srv/fpm fleet", '/srv/a"b', "/srv/a'b", "/srv/a\tb"])
def test_roots_that_cannot_be_written_into_apache_urls_are_refused(inventory_data, build_fleet,
                                                                   root):
    inventory_data["defaults"]["root"] = root
    with pytest.raises(ConfigError, match=r"defaults\.root: .*whitespace or quotes"):
        build_fleet(inventory_data)


def test_fpm_ini_filter_refuses_a_value_it_cannot_quote():
    with pytest.raises(ValueError, match="cannot write"):
        render._ini('/srv/a"b')


# --- the pool's systemd unit -------------------------------------------------------------------

def unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file -> key -> every value given to it, in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def test_unit_file_is_the_pools_template_unit_in_etc_systemd(fleet):
    f = render.unit_file(fleet.host("own"), fleet.pool("api"))
    assert f.path == PurePosixPath("/etc/systemd/system/fpm-fleet-api@.service")
    assert f.mode == "0644"


def test_unit_runs_the_replicas_fpm_config_in_the_foreground(fleet):
    service = unit(render.unit_file(fleet.host("own"), fleet.pool("api")).text)["Service"]
    assert service["Type"] == ["notify"]
    assert service["ExecStart"] == [
        "/usr/sbin/php-fpm8.2 --nodaemonize --fpm-config /srv/h2/api/conf/api-%i.conf"]


def test_unit_binds_current_release_read_only_on_current(fleet):
    service = unit(render.unit_file(fleet.host("own"), fleet.pool("www")).text)["Service"]
    assert service["BindReadOnlyPaths"] == [
        "/srv/h2/www/current.release:/srv/h2/www/current"]


def test_unit_stops_gracefully_within_stop_timeout_and_restarts_a_dead_master(
        inventory_data, build_fleet):
    inventory_data["pools"]["www"]["stop_timeout"] = 25
    fleet = build_fleet(inventory_data)
    service = unit(render.unit_file(fleet.hosts[0], fleet.pools[0]).text)["Service"]
    assert service["KillSignal"] == ["SIGQUIT"]
    # systemd's SIGKILL comes a few seconds after FPM's own process_control_timeout
    assert service["TimeoutStopSec"] == ["30"]
    assert service["Restart"] == ["always"]


def test_unit_starts_before_apache_and_at_boot(fleet):
    sections = unit(render.unit_file(fleet.host("sys"), fleet.pool("www")).text)
    assert sections["Unit"]["Before"] == ["apache2.service"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_doubles_a_percent_sign_in_a_path(inventory_data, build_fleet):
    # `%` starts a specifier in a unit file; `%i` (the replica) must stay the only one
    inventory_data["defaults"]["root"] = "/srv/100%i"
    fleet = build_fleet(inventory_data)
    service = unit(render.unit_file(fleet.hosts[0], fleet.pools[0]).text)["Service"]
    assert service["BindReadOnlyPaths"] == [
        "/srv/100%%i/www/current.release:/srv/100%%i/www/current"]
    assert service["ExecStart"] == [
        "/usr/sbin/php-fpm8.2 --nodaemonize --fpm-config /srv/100%%i/www/conf/www-%i.conf"]


@pytest.mark.parametrize("root", ["/srv/fpm fleet", "/srv/a\tb", "/srv/a\nb", '/srv/a"b'])
def test_unit_refuses_a_path_it_cannot_write_unquoted(web, root):
    # the inventory already refuses these roots; the unit filter holds on its own too
    host, pool = web
    with pytest.raises(ValueError, match=r"cannot write .* into a systemd unit"):
        render.unit_file(dataclasses.replace(host, root=root), pool)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None
                    or not Path("/usr/sbin/php-fpm8.2").exists(),
                    reason="needs systemd-analyze and php8.2-fpm")
def test_unit_passes_systemd_analyze_verify_without_a_warning(web, tmp_path):
    host, pool = web
    f = render.unit_file(host, pool)
    path = tmp_path / f.path.name
    path.write_text(f.text)
    instance = tmp_path / "fpm-fleet-www@1.service"
    result = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")
