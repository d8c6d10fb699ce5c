"""tasks.render: the Apache site / instance config and one PHP-FPM config per replica."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

import pytest

from tasks import render
from tasks.errors import ConfigError


@pytest.fixture
def fleet(inventory_data, build_fleet):
    inventory_data["hosts"] = [
        {"name": "sys", "address": "198.18.0.11"},
        {"name": "inst", "address": "198.18.0.12", "root": "/srv/h2",
         "apache": {"mode": "instance", "listen": "198.18.0.12:80", "manager_port": 8082}},
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


def test_instance_mode_adds_a_main_config_before_the_site(fleet):
    files = render.apache_files(fleet, fleet.host("inst"))
    assert [f.path for f in files] == [PurePosixPath("/srv/h2/apache/apache2.conf"),
                                       PurePosixPath("/srv/h2/apache/sites/fpm-fleet.conf")]


def test_instance_main_config_has_its_own_pid_runtime_dir_listens_and_includes_the_site(fleet):
    main = render.apache_files(fleet, fleet.host("inst"))[0].text
    lines = main.splitlines()
    assert 'PidFile "/srv/h2/apache/run/apache2.pid"' in lines
    assert 'DefaultRuntimeDir "/srv/h2/apache/run"' in lines
    assert 'Mutex "file:/srv/h2/apache/run" default' in lines
    assert 'ErrorLog "/srv/h2/apache/log/error.log"' in lines
    assert [x for x in lines if x.startswith("Listen ")] == [
        "Listen 198.18.0.12:80", "Listen 127.0.0.1:8082"]
    assert 'Include "/srv/h2/apache/sites/fpm-fleet.conf"' in lines
    for module in ("proxy", "proxy_fcgi", "proxy_balancer", "lbmethod_bybusyness",
                   "slotmem_shm", "authz_host"):
        assert (f"LoadModule {module}_module /usr/lib/apache2/modules/mod_{module}.so"
                in lines)


def test_instance_site_has_no_listen_of_its_own(fleet):
    # the main config already listens; a second `Listen` for one address fails at start
    assert "Listen" not in site_text(fleet, "inst")


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
    for host in ("sys", "inst"):
        assert re.search(r"^BalancerPersist On$", site_text(fleet, host), re.M)


def test_balancer_manager_is_a_loopback_vhost_reachable_only_locally(fleet):
    text = site_text(fleet, "inst")
    manager = re.search(r"<VirtualHost 127\.0\.0\.1:8082>\n(.*?)</VirtualHost>", text, re.S)
    assert manager is not None
    body = manager.group(1)
    assert '<Location "/balancer-manager">' in body
    assert "SetHandler balancer-manager" in body
    assert "Require local" in body
    assert "Require all granted" not in body


def test_proxy_rules_live_inside_each_pools_vhost(fleet):
    text = site_text(fleet, "inst")
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
    assert values["daemonize"] == "yes"
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
    assert values["error_log"] == '"/srv/fpm-fleet/www/log/www-1.log"'
    assert values["php_admin_value[error_log]"] == '"/srv/fpm-fleet/www/log/www-1.log"'


@pytest.mark.parametrize("root", ["/srv/fpm fleet", '/srv/a"b', "/srv/a'b", "/srv/a\tb"])
def test_roots_that_cannot_be_written_into_apache_urls_are_refused(inventory_data, build_fleet,
                                                                   root):
    inventory_data["defaults"]["root"] = root
    with pytest.raises(ConfigError, match=r"defaults\.root: .*whitespace or quotes"):
        build_fleet(inventory_data)


def test_fpm_ini_filter_refuses_a_value_it_cannot_quote():
    with pytest.raises(ValueError, match="cannot write"):
        render._ini('/srv/a"b')


