"""fpm_fleet.render: the Apache site, one PHP-FPM config per replica, the pool's systemd
unit."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import PurePosixPath

import pytest

from fpm_fleet import render
from fpm_fleet.core.errors import ConfigError


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


def test_site_has_one_balancer_per_pool_with_one_member_per_slot(fleet):
    # surge, the default: replicas x 2 slots (the serving set and the standby set)
    text = site_text(fleet, "sys")
    assert re.findall(r'^<Proxy "(balancer://[^"]+)">', text, re.M) == [
        "balancer://www", "balancer://api"]
    www, api = blocks(text, "Proxy", "Proxy")
    assert re.findall(r"BalancerMember (.*)", www) == [
        f'"unix:/srv/fpm-fleet/www/run/www-{n}.sock|fcgi://www-{n}" retry=2'
        for n in (1, 2, 3, 4)]
    assert re.findall(r'BalancerMember "unix:[^|]+\|(fcgi://[^"]+)"', api) == [
        f"fcgi://api-{n}" for n in range(1, 7)]
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
    for directive in ("ProxyPass", "Rewrite", "ProxyFCGISetEnvIf"):
        assert directive not in outside
    vhosts = re.findall(r"<VirtualHost 198\.18\.0\.12:80>\n(.*?)</VirtualHost>", text, re.S)
    assert len(vhosts) == 2
    www, api = vhosts
    assert "ServerName www\n" in www and "ServerName api.example\n" in api
    assert re.findall(r'RewriteRule \S+ "(balancer://[^"]*)"', www) == [
        "balancer://www/srv/h2/www/current/$1"]
    assert re.findall(r'RewriteRule \S+ "(balancer://[^"]*)"', api) == [
        "balancer://api/srv/h2/api/current/$1"]


def test_static_files_are_served_from_current_release(fleet):
    text = site_text(fleet, "sys")
    assert 'DocumentRoot "/srv/fpm-fleet/www/current.release"' in text
    assert 'DocumentRoot "/srv/fpm-fleet/api/current.release"' in text


def test_system_vhost_uses_the_host_listen_address(fleet):
    assert len(re.findall(r"^<VirtualHost \*:80>$", site_text(fleet, "sys"), re.M)) == 2


# --- the vhost of a framework application --------------------------------------------------

@pytest.fixture
def app_fleet(inventory_data, build_fleet):
    inventory_data["pools"] = {
        "app": {"replicas": 2, "server_name": "app.example", "document_root": "public",
                "front_controller": "index.php"},
        "legacy": {"replicas": 2}}
    return build_fleet(inventory_data)


def vhost(fleet, pool: str) -> str:
    text = site_text(fleet, "web1")
    for body in blocks(text, "VirtualHost", "VirtualHost"):
        if re.search(rf"^\s*ServerName {re.escape(fleet.pool(pool).server_name)}$", body, re.M):
            return body
    raise AssertionError(f"no vhost for {pool}")


def rewrite_rules(body: str) -> list[tuple[list[str], str]]:
    """Each RewriteRule with the RewriteCond lines just before it, in order."""
    rules, conds = [], []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("RewriteCond "):
            conds.append(line)
        elif line.startswith("RewriteRule "):
            rules.append((conds, line))
            conds = []
    return rules


def test_static_files_come_from_document_root_of_the_active_release(app_fleet):
    body = vhost(app_fleet, "app")
    assert 'DocumentRoot "/srv/fpm-fleet/app/current.release/public"' in body


def test_only_document_root_is_granted_and_the_rest_of_the_pool_is_denied(app_fleet):
    body = vhost(app_fleet, "app")
    dirs = dict(re.findall(r'<Directory "([^"]+)">\n(.*?)</Directory>', body, re.S))
    assert list(dirs) == ["/srv/fpm-fleet/app", "/srv/fpm-fleet/app/current.release/public",
                          "/srv/fpm-fleet/app/previous.release/public"]
    pool, web, fallback = dirs.values()
    assert "Require all denied" in pool and "Require all granted" not in pool
    # current.release is a symlink: without FollowSymLinks Apache refuses it (AH00037)
    assert "Options FollowSymLinks" in pool and "AllowOverride None" in pool
    assert "Require all granted" in web
    # the previous release's document_root is granted under exactly the same rules
    assert fallback == web


def test_legacy_pool_without_document_root_serves_the_release_root(app_fleet):
    body = vhost(app_fleet, "legacy")
    assert 'DocumentRoot "/srv/fpm-fleet/www/current.release"' not in body
    assert 'DocumentRoot "/srv/fpm-fleet/legacy/current.release"' in body
    assert '<Directory "/srv/fpm-fleet/legacy/current.release">' in body


@pytest.mark.parametrize(("path", "denied"), [
    ("/.env", True), ("/.git/config", True), ("/.htaccess", True), ("/sub/.hidden", True),
    ("/index.php/.git", True), ("/.well-known/.secret", True), ("/.well-knownx", True),
    ("/.well-known/acme-challenge/token", False), ("/.well-known", False),
    ("/hello/world", False), ("/a.b/c.d", False), ("/index.php", False), ("/", False)])
def test_dotfiles_and_dot_directories_are_denied_but_well_known(app_fleet, path, denied):
    body = vhost(app_fleet, "app")
    (pattern, rule), = re.findall(r'<LocationMatch "([^"]+)">\n(.*?)</LocationMatch>', body,
                                  re.S)
    assert "Require all denied" in rule
    # <LocationMatch> sees the decoded, normalized URL path of static and proxied requests
    assert bool(re.search(pattern, path)) is denied


@pytest.mark.parametrize(("name", "denied"), [
    ("index.php", True), ("x.php5", True), ("v.phtml", True), ("a.phar", True),
    ("config.inc", True), ("s.phps", True), ("app.js", False), ("php.txt", False),
    ("style.css", False), ("a.php.txt", False)])
def test_php_source_is_never_served_as_a_static_file(app_fleet, name, denied):
    granted = '<Directory "/srv/fpm-fleet/app/current.release/public">'
    web = vhost(app_fleet, "app").split(granted)[1]
    pattern, rule = re.findall(r'<FilesMatch "([^"]+)">\n(.*?)</FilesMatch>', web, re.S)[0]
    assert "Require all denied" in rule
    assert bool(re.search(pattern, name)) is denied


def test_existing_php_file_runs_on_the_balancer_pinned_with_its_path_info(app_fleet):
    (conds, rule), *_ = rewrite_rules(vhost(app_fleet, "app"))
    assert conds == ['RewriteCond "/srv/fpm-fleet/app/current.release/public/$1" -f']
    assert rule == ('RewriteRule "^/(.+?\\.php)(/.*)?$" '
                    '"balancer://app/srv/fpm-fleet/app/current/public/$1" '
                    "[P,E=FPM_FLEET_SCRIPT:/$1,E=FPM_FLEET_PATH_INFO:$2]")


def test_fastcgi_variables_come_from_the_decoded_path_under_current(app_fleet):
    body = vhost(app_fleet, "app")
    assert re.findall(r"ProxyFCGISetEnvIf (.*)", body) == [
        "\"-n reqenv('FPM_FLEET_SCRIPT')\" SCRIPT_FILENAME "
        '"/srv/fpm-fleet/app/current/public%{reqenv:FPM_FLEET_SCRIPT}"',
        "\"-n reqenv('FPM_FLEET_SCRIPT')\" SCRIPT_NAME \"%{reqenv:FPM_FLEET_SCRIPT}\"",
        "\"-n reqenv('FPM_FLEET_PATH_INFO')\" PATH_INFO \"%{reqenv:FPM_FLEET_PATH_INFO}\""]


def test_front_controller_runs_every_path_that_is_not_an_existing_file(app_fleet):
    _, _, (static_conds, static), (fc_conds, fc) = rewrite_rules(vhost(app_fleet, "app"))
    assert static_conds == ['RewriteCond "/srv/fpm-fleet/app/current.release/public/$1" -f']
    assert static == 'RewriteRule "^/(.*)$" - [L]'
    assert fc_conds == []
    assert fc == ('RewriteRule "^" "balancer://app/srv/fpm-fleet/app/current/public/index.php" '
                  "[P,E=FPM_FLEET_SCRIPT:/index.php,E=FPM_FLEET_PATH_INFO:%{REQUEST_URI}]")


def test_without_front_controller_only_existing_php_files_are_proxied(app_fleet):
    body = vhost(app_fleet, "legacy")
    assert len(rewrite_rules(body)) == 2  # .php, previous release's files
    assert "DirectoryIndex index.php index.html" in body


@pytest.mark.parametrize("pool", ["app", "legacy"])
def test_a_file_missing_from_the_active_release_falls_back_to_the_previous_one(app_fleet,
                                                                               pool):
    _php_rule, (conds, rule), *_ = rewrite_rules(vhost(app_fleet, pool))
    web, fallback = (f"/srv/fpm-fleet/{pool}/{link}{'/public' if pool == 'app' else ''}"
                     for link in ("current.release", "previous.release"))
    assert conds == [f'RewriteCond "{web}/$1" !-f', f'RewriteCond "{web}/$1" !-d',
                     f'RewriteCond "{fallback}/$1" -f']
    # a plain file path, served under the fallback <Directory>: never proxied
    assert rule == f'RewriteRule "^/(.*)$" "{fallback}/$1" [L]'


def test_rewrite_conditions_use_only_file_tests_mod_rewrite_has(app_fleet):
    # a CondPattern mod_rewrite does not know (`-e`, `!-e`) is silently taken as a regex
    for pool in ("app", "legacy"):
        for conds, _ in rewrite_rules(vhost(app_fleet, pool)):
            assert {shlex.split(c)[2] for c in conds} <= {"-f", "!-f", "-d", "!-d"}, pool


# Files of a fake host for route(): the active release's and the previous one's.
WEB = "/srv/fpm-fleet/app/current.release/public"
OLD = "/srv/fpm-fleet/app/previous.release/public"
FILES = {f"{WEB}/index.php", f"{WEB}/app.new.css", f"{WEB}/both.css",
         f"{OLD}/index.php", f"{OLD}/app.old.css", f"{OLD}/both.css", f"{OLD}/gone.php",
         f"{OLD}/dir"}
DIRS = {WEB, OLD, f"{WEB}/dir"}


def route(body: str, path: str) -> str:
    """What the vhost's rewrite rules make of `path` on a host holding FILES and DIRS: the
    first rule whose pattern and conditions hold, its substitution expanded ("-": served as
    is, from DocumentRoot); "" if none applies (DocumentRoot and mod_dir)."""
    def holds(cond: str, groups: dict[str, str]) -> bool:
        _, test, op = shlex.split(cond)
        for n, value in groups.items():
            test = test.replace(n, value)
        # only the tests mod_rewrite has (it has no -e: anything else would be a regex)
        return {"-f": test in FILES, "!-f": test not in FILES, "-d": test in DIRS,
                "!-d": test not in DIRS}[op]

    for conds, rule in rewrite_rules(body):
        _, pattern, target, *_ = shlex.split(rule)
        m = re.match(pattern, path)
        if not m:
            continue
        groups = {f"${i}": g or "" for i, g in enumerate(m.groups(), 1)}
        if all(holds(c, groups) for c in conds):
            for n, value in groups.items():
                target = target.replace(n, value)
            return target
    return ""


FC = "balancer://app/srv/fpm-fleet/app/current/public/index.php"


@pytest.mark.parametrize(("path", "served"), [
    ("/app.new.css", "-"),                   # the active release's own file
    ("/both.css", "-"),                      # in both: always the active release's
    ("/index.php/x", "balancer://app/srv/fpm-fleet/app/current/public/index.php"),
    ("/app.old.css", f"{OLD}/app.old.css"),  # only in the previous release
    ("/gone.php", f"{OLD}/gone.php"),        # a file there, refused by <FilesMatch>
    ("/hello/world", FC),                    # in neither: the front controller
    ("/app.old.css/x", FC),
    ("/dir", FC),                            # a directory of the active release wins
    ("/", FC),
    ("/index.php", "balancer://app/srv/fpm-fleet/app/current/public/index.php")])
def test_front_controller_vhost_routes_each_path(app_fleet, path, served):
    assert route(vhost(app_fleet, "app"), path) == served


def test_a_php_file_only_in_the_previous_release_is_refused_never_run(app_fleet):
    body = vhost(app_fleet, "app")
    assert not route(body, "/gone.php").startswith("balancer:")
    fallback = body.split(f'<Directory "{OLD}">')[1].split("</Directory>")[0]
    pattern = re.findall(r'<FilesMatch "([^"]+)">\n\s*Require all denied', fallback)[0]
    assert re.search(pattern, "gone.php")


def test_php_rule_matches_up_to_the_first_php_segment():
    pattern = r"^/(.+?\.php)(/.*)?$"
    assert re.match(pattern, "/a.php/b.php/c").groups() == ("a.php", "/b.php/c")
    assert re.match(pattern, "/sub/x.php").groups() == ("sub/x.php", None)
    assert re.match(pattern, "/x.phpx/y") is None
    assert re.match(pattern, "/.php") is None


# --- Listen ------------------------------------------------------------------------------------

def listens(fleet, host: str = "web1") -> list[str]:
    text = site_text(fleet, host)
    return re.findall(r"^(<IfModule [^>]+>|Listen .*|</IfModule>)$", text.split("<Proxy")[0],
                      re.M)


@pytest.mark.parametrize("listen", ["*:80", "198.18.0.11:80", "[::1]:80"])
def test_port_80_is_left_to_debians_ports_conf(inventory_data, build_fleet, listen):
    # ports.conf has `Listen 80` on every address; `Listen 198.18.0.11:80` beside it passes
    # configtest, then fails to bind (EADDRINUSE) and takes Apache down at the graceful
    inventory_data["hosts"][0]["apache"] = {"listen": listen}
    assert listens(build_fleet(inventory_data)) == ["Listen 127.0.0.1:8081"]


@pytest.mark.parametrize("listen", ["127.0.0.1:8088", "*:8088", "[::1]:8088"])
def test_another_port_gets_its_own_listen(inventory_data, build_fleet, listen):
    inventory_data["hosts"][0]["apache"] = {"listen": listen}
    fleet = build_fleet(inventory_data)
    assert listens(fleet) == [f"Listen {listen}", "Listen 127.0.0.1:8081"]
    assert f"<VirtualHost {listen}>" in site_text(fleet, "web1")


def test_port_443_listens_only_where_no_tls_module_already_does(inventory_data, build_fleet):
    inventory_data["hosts"][0]["apache"] = {"listen": "198.18.0.11:443"}
    assert listens(build_fleet(inventory_data)) == [
        "<IfModule !ssl_module>", "<IfModule !mod_gnutls.c>", "Listen 198.18.0.11:443",
        "</IfModule>", "</IfModule>", "Listen 127.0.0.1:8081"]


def test_site_listens_are_pure_data(inventory_data, build_fleet):
    inventory_data["hosts"][0]["apache"] = {"listen": "127.0.0.1:8088", "manager_port": 9000}
    host = build_fleet(inventory_data).hosts[0]
    assert render.site_listens(host) == (render.Listen("127.0.0.1:8088"),
                                         render.Listen("127.0.0.1:9000"))


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
                                       for n in range(1, 7)]
    assert len({f.text for f in files}) == 6


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
    assert [v["syslog.ident"] for v in values] == [f'"fpm-fleet-api-{n}"' for n in range(1, 7)]
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


@pytest.mark.parametrize("root", ["/srv/fpm fleet", '/srv/a"b', "/srv/a'b", "/srv/a\tb",
                                  "/srv/$1", "/srv/%{HTTP_HOST}"])
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


def test_a_stop_first_lowers_the_replicas_cpu_priority(inventory_data, build_fleet):
    """ExecStop, run for real on a process group of our own (systemd passes MAINPID and
    turns `$$` into `$`): every process of the group ends at nice 19, and a failure
    (no autogroup file) fails nothing."""
    fleet = build_fleet(inventory_data)
    service = unit(render.unit_file(fleet.hosts[0], fleet.pools[0]).text)["Service"]
    (stop,) = service["ExecStop"]
    assert stop.startswith("-/bin/sh -c ")
    script = shlex.split(stop[1:].replace("$$", "$"))[2]
    leader = subprocess.Popen(["sh", "-c", "sleep 30 & sleep 30"], start_new_session=True)
    try:
        time.sleep(0.2)
        done = subprocess.run(["sh", "-c", script], env={**os.environ, "MAINPID": str(leader.pid)},
                              check=False)
        group = subprocess.run(["ps", "-o", "ni=", "-g", str(leader.pid)], capture_output=True,
                               text=True, check=True).stdout.split()
    finally:
        os.killpg(leader.pid, signal.SIGTERM)
        leader.wait()
    assert done.returncode == 0
    assert len(group) == 3 and set(group) == {"19"}


def test_unit_starts_before_apache_and_at_boot(fleet):
    sections = unit(render.unit_file(fleet.host("sys"), fleet.pool("www")).text)
    assert sections["Unit"]["Before"] == ["apache2.service"]
    assert sections["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_doubles_a_percent_sign_in_a_path(inventory_data, build_fleet):
    # `%` starts a specifier in a unit file; `%i` (the replica) must stay the only one. The
    # inventory refuses `%` in roots (mod_rewrite), so the renderer is its last line.
    fleet = build_fleet(inventory_data)
    host = dataclasses.replace(fleet.hosts[0], root="/srv/100%i")
    service = unit(render.unit_file(host, fleet.pools[0]).text)["Service"]
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


