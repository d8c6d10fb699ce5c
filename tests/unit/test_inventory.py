"""hosts.toml -> Fleet: defaults, per-host overrides, and one clear error per mistake.

Every error must name the file, the key and the problem, so each test checks all three.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest

from fpm_fleet.core import inventory
from fpm_fleet.core.errors import ConfigError

FILE = "etc/hosts.toml"


def expect(message: str, key: str, problem: str) -> None:
    assert message.startswith(f"{FILE}: "), message
    assert f" {key}: " in message, message
    assert problem in message, message


# --- a valid inventory ----------------------------------------------------------------------

def test_valid_inventory_parses_hosts_in_order_and_pools_by_name(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data)
    assert [h.name for h in fleet.hosts] == ["web1", "web2"]
    assert [p.name for p in fleet.pools] == ["www"]
    assert fleet.host("web2").address == "198.18.0.12"
    assert fleet.pool("www").replicas == 2
    assert fleet.path == "hosts.toml"


def test_fleet_lookup_of_unknown_names_raises_key_error(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data)
    with pytest.raises(KeyError):
        fleet.host("nope")
    with pytest.raises(KeyError):
        fleet.pool("nope")


def test_built_in_defaults_apply_when_nothing_is_set(build_fleet):
    fleet = build_fleet({"hosts": [{"name": "a", "address": "198.18.0.2"}],
                         "pools": {"www": {"replicas": 2}}})
    host, pool = fleet.hosts[0], fleet.pools[0]
    assert (host.port, host.user, host.root) == (22, "root", "/srv/fpm-fleet")
    assert host.sudo is False
    assert host.trust_new_host_keys is False
    assert host.keep_releases == 5
    assert host.apache == inventory.Apache()
    assert (pool.root, pool.balancer, pool.server_name) == ("www", "www", "www")
    assert pool.php_fpm == "/usr/sbin/php-fpm8.2"
    assert (pool.ping_path, pool.status_path, pool.health_path) == (
        "/fpm-ping", "/fpm-status", "/health.php")
    assert pool.shared == () and pool.before_activate == ()
    assert pool.stop_timeout == 60
    assert fleet.log_dir == os.path.abspath("logs")  # beside a relative inventory, absolute


def test_defaults_are_inherited_by_every_host(inventory_data, build_fleet):
    inventory_data["defaults"] = {"port": 2222, "user": "deploy", "root": "/opt/fleet",
                                  "apache": {"listen": "*:8080", "manager_port": 9000}}
    for host in build_fleet(inventory_data).hosts:
        assert host.port == 2222
        assert host.user == "deploy"
        assert host.root == "/opt/fleet"
        assert host.apache.listen == "*:8080"
        assert host.apache.manager_port == 9000
        assert host.apache.mode == "system"


def test_a_host_overrides_port_user_root_and_apache_listen(inventory_data, build_fleet):
    inventory_data["defaults"] = {"port": 2222, "user": "deploy", "root": "/opt/fleet",
                                  "apache": {"listen": "*:8080", "manager_port": 9000}}
    inventory_data["hosts"][1].update(port=22, user="root", root="/srv/other",
                                      apache={"listen": "198.18.0.12:80"})
    web1, web2 = build_fleet(inventory_data).hosts
    assert (web1.port, web1.user, web1.root, web1.apache.listen) == (
        2222, "deploy", "/opt/fleet", "*:8080")
    assert (web2.port, web2.user, web2.root, web2.apache.listen) == (
        22, "root", "/srv/other", "198.18.0.12:80")
    # keys the host did not override still come from [defaults.apache]
    assert web2.apache.manager_port == 9000


def test_sudo_defaults_to_true_for_a_non_root_user(inventory_data, build_fleet):
    inventory_data["defaults"] = {"user": "deploy"}
    inventory_data["hosts"][1]["user"] = "root"
    web1, web2 = build_fleet(inventory_data).hosts
    assert web1.sudo is True
    assert web2.sudo is False


def test_explicit_sudo_wins_over_the_user_based_default(inventory_data, build_fleet):
    inventory_data["defaults"] = {"user": "deploy", "sudo": False}
    inventory_data["hosts"][1]["sudo"] = True
    web1, web2 = build_fleet(inventory_data).hosts
    assert web1.sudo is False
    assert web2.sudo is True


def test_setup_user_defaults_to_the_login_user_and_a_host_may_override_it(inventory_data,
                                                                         build_fleet):
    inventory_data["defaults"] = {"user": "deploy"}
    inventory_data["hosts"][1]["setup_user"] = "root"
    web1, web2 = build_fleet(inventory_data).hosts
    assert (web1.user, web1.setup_user) == ("deploy", "deploy")
    assert (web2.user, web2.setup_user) == ("deploy", "root")


def test_setup_user_must_be_a_user_name(inventory_data):
    inventory_data["defaults"]["setup_user"] = "root; rm -rf /"
    with pytest.raises(ConfigError, match=r"defaults\.setup_user: must be a user name"):
        inventory.parse(inventory_data)


def test_integer_timeouts_are_accepted_as_numbers(inventory_data, build_fleet):
    inventory_data["defaults"]["connect_timeout"] = 5
    host = build_fleet(inventory_data).hosts[0]
    assert host.connect_timeout == 5.0
    assert isinstance(host.connect_timeout, float)


def test_pool_dir_joins_host_root_and_pool_root_and_absolute_pool_root_wins(
        inventory_data, build_fleet):
    inventory_data["pools"]["api"] = {"replicas": 3, "root": "/data/api"}
    fleet = build_fleet(inventory_data)
    host = fleet.hosts[0]
    assert host.pool_dir(fleet.pool("www")) == PurePosixPath("/srv/fpm-fleet/www")
    assert host.pool_dir(fleet.pool("api")) == PurePosixPath("/data/api")


def test_manager_url_defaults_to_loopback_manager_port_and_pool_can_override(
        inventory_data, build_fleet):
    inventory_data["defaults"]["apache"]["manager_port"] = 8099
    inventory_data["pools"]["api"] = {"replicas": 2,
                                      "manager_url": "http://127.0.0.1:9/balancer-manager"}
    fleet = build_fleet(inventory_data)
    host = fleet.hosts[0]
    assert host.manager_url(fleet.pool("www")) == "http://127.0.0.1:8099/balancer-manager"
    assert host.manager_url(fleet.pool("api")) == "http://127.0.0.1:9/balancer-manager"


def test_pool_members_are_fcgi_identities_numbered_from_one(inventory_data, build_fleet):
    inventory_data["pools"]["www"]["replicas"] = 3
    pool = build_fleet(inventory_data).pools[0]
    assert list(pool.replica_numbers) == [1, 2, 3]
    assert [pool.member(n) for n in pool.replica_numbers] == [
        "fcgi://www-1", "fcgi://www-2", "fcgi://www-3"]


def test_same_address_on_different_ports_is_two_hosts(inventory_data, build_fleet):
    inventory_data["hosts"][1].update(address="198.18.0.11", port=2200)
    assert len(build_fleet(inventory_data).hosts) == 2


# --- missing keys -----------------------------------------------------------------------------

def test_missing_hosts_is_rejected_naming_the_key(inventory_data, config_error):
    del inventory_data["hosts"]
    expect(config_error(inventory_data, FILE), "hosts", "missing required key")


def test_missing_pools_is_rejected_naming_the_key(inventory_data, config_error):
    del inventory_data["pools"]
    expect(config_error(inventory_data, FILE), "pools", "missing required key")


def test_missing_host_address_is_rejected_naming_the_host_and_key(inventory_data, config_error):
    del inventory_data["hosts"][0]["address"]
    expect(config_error(inventory_data, FILE), "hosts.web1.address", "missing required key")


def test_missing_host_name_is_rejected_naming_the_key(inventory_data, config_error):
    del inventory_data["hosts"][1]["name"]
    message = config_error(inventory_data, FILE)
    assert message.startswith(f"{FILE}: ")
    assert "hosts[1].name" in message
    assert "missing required key" in message


def test_missing_host_name_names_the_key_as_written_in_the_file(inventory_data, config_error):
    del inventory_data["hosts"][1]["name"]
    expect(config_error(inventory_data, FILE), "hosts[1].name", "missing required key")


def test_missing_pool_replicas_is_rejected_naming_the_pool_and_key(inventory_data, config_error):
    del inventory_data["pools"]["www"]["replicas"]
    expect(config_error(inventory_data, FILE), "pools.www.replicas", "missing required key")


def test_empty_host_list_is_rejected(inventory_data, config_error):
    inventory_data["hosts"] = []
    expect(config_error(inventory_data, FILE), "hosts", "at least one host is required")


def test_empty_pools_table_is_rejected(inventory_data, config_error):
    inventory_data["pools"] = {}
    expect(config_error(inventory_data, FILE), "pools", "at least one pool is required")


def put(data: dict, where: str, key: str, value: object, host: int = 0) -> str:
    """Set `key` in a host, the pool or [defaults]; return the prefix errors name it by."""
    if where == "host":
        data["hosts"][host][key] = value
        return f"hosts.{value}" if key == "name" else f"hosts.{data['hosts'][host]['name']}"
    if where == "pool":
        data["pools"]["www"][key] = value
        return "pools.www"
    data["defaults"][key] = value
    return "defaults"


# --- wrong types ------------------------------------------------------------------------------

@pytest.mark.parametrize(("where", "key", "value", "problem"), [
    ("host", "port", "22", "must be an integer, got str"),
    ("host", "port", True, "must be an integer, got bool"),
    ("host", "sudo", "yes", "must be true or false, got str"),
    ("host", "connect_timeout", "fast", "must be a number, got str"),
    ("host", "root", 7, "must be a string, got int"),
    ("host", "apache", "instance", "must be a table, got str"),
    ("pool", "replicas", "3", "must be an integer, got str"),
    ("pool", "replicas", 2.5, "must be an integer, got float"),
    ("pool", "replicas", True, "must be an integer, got bool"),
    ("pool", "stop_timeout", "60s", "must be an integer, got str"),
    ("pool", "stop_timeout", 1.5, "must be an integer, got float"),
    ("pool", "shared", "storage", "must be a list, got str"),
    ("pool", "shared", ["storage", 3], "must be a list of strings"),
    ("defaults", "trust_new_host_keys", "no", "must be true or false, got str"),
    ("defaults", "keep_releases", 3.0, "must be an integer, got float"),
])
def test_wrong_type_is_rejected_naming_key_and_expected_type(
        inventory_data, config_error, where, key, value, problem):
    prefix = put(inventory_data, where, key, value)
    expect(config_error(inventory_data, FILE), f"{prefix}.{key}", problem)


def test_hosts_given_as_a_table_is_rejected(inventory_data, config_error):
    inventory_data["hosts"] = {"web1": {"address": "198.18.0.11"}}
    expect(config_error(inventory_data, FILE), "hosts", "must be a list, got dict")


def test_a_host_that_is_not_a_table_is_rejected_naming_its_index(inventory_data, config_error):
    inventory_data["hosts"][1] = "web2"
    expect(config_error(inventory_data, FILE), "hosts[1]", "must be a table")


def test_a_pool_that_is_not_a_table_is_rejected(inventory_data, config_error):
    inventory_data["pools"]["www"] = 2
    expect(config_error(inventory_data, FILE), "pools.www", "must be a table")


# --- bad values -------------------------------------------------------------------------------

@pytest.mark.parametrize("replicas", [1, 0, -3])
def test_replicas_below_two_is_rejected_naming_the_key(inventory_data, config_error, replicas):
    inventory_data["pools"]["www"]["replicas"] = replicas
    expect(config_error(inventory_data, FILE), "pools.www.replicas", "must be >= 2")


def test_replicas_above_the_limit_is_rejected(inventory_data, config_error):
    inventory_data["pools"]["www"]["replicas"] = 65
    expect(config_error(inventory_data, FILE), "pools.www.replicas", "must be <= 64")


def test_two_replicas_is_the_minimum_accepted(inventory_data, build_fleet):
    inventory_data["pools"]["www"]["replicas"] = 2
    assert build_fleet(inventory_data).pools[0].replicas == 2


@pytest.mark.parametrize(("where", "key", "value", "problem"), [
    ("host", "port", 0, "must be a TCP port"),
    ("host", "port", 70000, "must be a TCP port"),
    ("host", "name", "web 1", "must be letters, digits"),
    ("host", "address", "198.18.0.1; rm", "must be a host name or an IP address"),
    ("host", "user", "Deploy", "must be a user name"),
    ("host", "keep_releases", 1, "must be >= 2"),
    ("host", "connect_timeout", 0, "must be > 0"),
    ("defaults", "command_timeout", -1.0, "must be > 0"),
    ("pool", "php_fpm", "php-fpm8.2", "must be an absolute path"),
    ("pool", "ping_path", "fpm-ping", "must be a URL path starting with '/'"),
    ("pool", "health_path", "/health.php?x=1", "must be a URL path starting with '/'"),
    ("pool", "balancer", "Www", "must be a simple lower-case name"),
    ("pool", "manager_url", "ftp://127.0.0.1/balancer-manager", "must be an http(s) URL"),
    ("pool", "retry", 61, "must be 0..60 seconds"),
    ("pool", "stop_timeout", 0, "must be 1..3600 seconds"),
    ("pool", "stop_timeout", 3601, "must be 1..3600 seconds"),
    ("pool", "max_children", 0, "must be >= 1"),
    ("pool", "server_name", "www example", "must be a host name"),
])
def test_out_of_range_values_are_rejected_naming_the_key(
        inventory_data, config_error, where, key, value, problem):
    prefix = put(inventory_data, where, key, value, host=1)
    expect(config_error(inventory_data, FILE), f"{prefix}.{key}", problem)


@pytest.mark.parametrize(("table", "key", "value", "problem"), [
    ("defaults.apache", "mode", "docker", "must be one of system"),
    ("defaults.apache", "manager_port", 0, "must be a TCP port"),
    ("hosts.web1.apache", "listen", "80 81", "must look like ADDRESS:PORT"),
    ("hosts.web1.apache", "manager_port", "8081", "must be an integer, got str"),
])
def test_bad_apache_values_are_rejected_naming_the_apache_table(
        inventory_data, config_error, table, key, value, problem):
    if table == "defaults.apache":
        inventory_data["defaults"]["apache"][key] = value
    else:
        inventory_data["hosts"][0]["apache"] = {key: value}
    expect(config_error(inventory_data, FILE), f"{table}.{key}", problem)


@pytest.mark.parametrize("table", ["defaults.apache", "hosts.web2.apache"])
def test_the_removed_instance_mode_is_refused_naming_the_key(inventory_data, config_error,
                                                              table):
    if table == "defaults.apache":
        inventory_data["defaults"]["apache"]["mode"] = "instance"
    else:
        inventory_data["hosts"][1]["apache"] = {"mode": "instance"}
    message = config_error(inventory_data, FILE)
    expect(message, f"{table}.mode", "must be one of system")
    assert "instance" not in message.split(": ", 2)[2]


@pytest.mark.parametrize("seconds", [1, 60, 3600])
def test_stop_timeout_within_one_second_to_one_hour_is_kept(inventory_data, build_fleet,
                                                            seconds):
    inventory_data["pools"]["www"]["stop_timeout"] = seconds
    assert build_fleet(inventory_data).pools[0].stop_timeout == seconds


def test_duplicate_host_name_is_rejected(inventory_data, config_error):
    inventory_data["hosts"][1]["name"] = "web1"
    message = config_error(inventory_data, FILE)
    expect(message, "hosts", "duplicate name 'web1'")


def test_duplicate_host_address_is_rejected(inventory_data, config_error):
    inventory_data["hosts"][1]["address"] = "198.18.0.11"
    message = config_error(inventory_data, FILE)
    expect(message, "hosts", "duplicate address")
    assert "198.18.0.11" in message


def test_two_pools_sharing_one_balancer_are_rejected(inventory_data, config_error):
    inventory_data["pools"]["api"] = {"replicas": 2, "balancer": "www"}
    expect(config_error(inventory_data, FILE), "pools", "duplicate balancer 'www'")


def test_two_pools_sharing_one_directory_are_rejected(inventory_data, config_error):
    inventory_data["pools"]["api"] = {"replicas": 2, "root": "www"}
    expect(config_error(inventory_data, FILE), "pools", "duplicate root")


# --- unknown keys (typos) ----------------------------------------------------------------------

def test_unknown_top_level_key_names_the_closest_valid_key(inventory_data, config_error):
    inventory_data["pool"] = {}
    expect(config_error(inventory_data, FILE), "pool", "unknown key; did you mean 'pools'?")


def test_unknown_key_in_defaults_names_the_closest_valid_key(inventory_data, config_error):
    inventory_data["defaults"]["prot"] = 22
    expect(config_error(inventory_data, FILE), "defaults.prot",
           "unknown key; did you mean 'port'?")


def test_unknown_key_in_a_host_names_the_closest_valid_key(inventory_data, config_error):
    inventory_data["hosts"][1]["sudoo"] = True
    expect(config_error(inventory_data, FILE), "hosts.web2.sudoo",
           "unknown key; did you mean 'sudo'?")


def test_unknown_key_in_a_pool_names_the_closest_valid_key(inventory_data, config_error):
    inventory_data["pools"]["www"]["max_childen"] = 3
    expect(config_error(inventory_data, FILE), "pools.www.max_childen",
           "unknown key; did you mean 'max_children'?")


def test_replica_written_for_replicas_is_a_typo_not_a_missing_key(inventory_data, config_error):
    inventory_data["pools"]["www"] = {"replica": 3}
    message = config_error(inventory_data, FILE)
    expect(message, "pools.www.replica", "unknown key; did you mean 'replicas'?")
    assert "missing" not in message


def test_a_misspelt_required_host_key_is_named_as_the_typo(inventory_data, config_error):
    inventory_data["hosts"][0] = {"name": "web1", "adress": "198.18.0.11"}
    expect(config_error(inventory_data, FILE), "hosts.web1.adress",
           "unknown key; did you mean 'address'?")


def test_an_unknown_key_like_no_valid_one_lists_the_valid_keys(inventory_data, config_error):
    inventory_data["hosts"][0]["apache"] = {"zzz": 1}
    expect(config_error(inventory_data, FILE), "hosts.web1.apache.zzz",
           "unknown key; valid keys: group, listen, manager_port, mode, user")


def test_unknown_key_in_defaults_apache_names_the_closest_valid_key(inventory_data, config_error):
    inventory_data["defaults"]["apache"]["mdoe"] = "instance"
    expect(config_error(inventory_data, FILE), "defaults.apache.mdoe",
           "unknown key; did you mean 'mode'?")


def test_unknown_key_in_a_host_apache_table_names_the_closest_valid_key(
        inventory_data, config_error):
    inventory_data["hosts"][0]["apache"] = {"lisen": "*:80"}
    expect(config_error(inventory_data, FILE), "hosts.web1.apache.lisen",
           "unknown key; did you mean 'listen'?")


# --- paths and names -------------------------------------------------------------------------

@pytest.mark.parametrize("root", ["srv/fleet", "/srv/../etc", "/srv/fleet/..", "", "/srv/a\nb"])
def test_host_root_must_be_absolute_without_dotdot(inventory_data, config_error, root):
    inventory_data["hosts"][0]["root"] = root
    expect(config_error(inventory_data, FILE), "hosts.web1.root",
           "must be an absolute path without '..'")


def test_relative_root_in_defaults_is_rejected_naming_defaults(inventory_data, config_error):
    inventory_data["defaults"]["root"] = "fleet"
    expect(config_error(inventory_data, FILE), "defaults.root", "must be an absolute path")


@pytest.mark.parametrize("root", ["../www", "apps/../../www", ""])
def test_pool_root_with_dotdot_or_empty_is_rejected(inventory_data, config_error, root):
    inventory_data["pools"]["www"]["root"] = root
    expect(config_error(inventory_data, FILE), "pools.www.root", "must be a path without '..'")


@pytest.mark.parametrize("item", ["/var/storage", "../storage", "a/../../b"])
def test_shared_items_must_be_relative_without_dotdot(inventory_data, config_error, item):
    inventory_data["pools"]["www"]["shared"] = ["storage", item]
    message = config_error(inventory_data, FILE)
    expect(message, "pools.www.shared", "must be a relative path without '..'")
    assert repr(item) in message


@pytest.mark.parametrize("name", ["WWW", "1www", "www_app", "-www", "w" * 40])
def test_bad_pool_name_is_rejected_naming_the_pool(inventory_data, config_error, name):
    inventory_data["pools"] = {name: {"replicas": 2}}
    expect(config_error(inventory_data, FILE), f"pools.{name}",
           "pool names are lower-case letters, digits and '-'")


@pytest.mark.parametrize("name", ["www", "api-2", "a"])
def test_simple_pool_names_are_accepted(inventory_data, build_fleet, name):
    inventory_data["pools"] = {name: {"replicas": 2}}
    assert build_fleet(inventory_data).pools[0].name == name


@pytest.mark.parametrize("where", ["host name", "pool name", "address", "ping_path"])
def test_a_trailing_newline_is_not_accepted_in_names(inventory_data, config_error, where):
    if where == "host name":
        inventory_data["hosts"][0]["name"] = "web1\n"
    elif where == "pool name":
        inventory_data["pools"] = {"www\n": {"replicas": 2}}
    elif where == "address":
        inventory_data["hosts"][0]["address"] = "198.18.0.11\n"
    else:
        inventory_data["pools"]["www"]["ping_path"] = "/fpm-ping\n"
    assert config_error(inventory_data, FILE).startswith(f"{FILE}: ")


# --- reading files ---------------------------------------------------------------------------

def test_load_reads_a_toml_file_and_records_its_path(tmp_path: Path):
    path = tmp_path / "hosts.toml"
    path.write_text('[[hosts]]\nname = "web1"\naddress = "198.18.0.11"\n'
                    '[pools.www]\nreplicas = 3\n')
    fleet = inventory.load(path)
    assert fleet.path == str(path)
    assert fleet.hosts[0].name == "web1"
    assert fleet.pools[0].replicas == 3


def test_load_errors_name_the_file_that_was_read(tmp_path: Path):
    path = tmp_path / "hosts.toml"
    path.write_text('[[hosts]]\nname = "web1"\n[pools.www]\nreplicas = 3\n')
    with pytest.raises(ConfigError) as info:
        inventory.load(path)
    assert str(info.value) == f"{path}: hosts.web1.address: missing required key"


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "hosts.toml"
    path.write_text('[[hosts]]\nname = "web1\n')
    with pytest.raises(ConfigError) as info:
        inventory.load(path)
    assert str(info.value).startswith(f"{path}: not valid TOML: ")
    assert info.value.exit_code == 2


def test_missing_inventory_file_is_a_config_error_naming_the_file(tmp_path: Path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        inventory.load(path)
    assert str(info.value) == f"{path}: inventory file not found"


# --- key files and relative paths --------------------------------------------------------------

def test_relative_paths_are_taken_from_the_inventory_directory(inventory_data, build_fleet):
    inventory_data["log_dir"] = "logs"
    inventory_data["defaults"].update(identity_file="keys/id_ed25519", known_hosts="known")
    inventory_data["hosts"][1]["identity_file"] = "keys/web2"
    inventory_data["pools"]["www"]["source"] = "build/www"
    fleet = build_fleet(inventory_data, "/opt/app/deploy/hosts.toml")
    web1, web2 = fleet.hosts
    assert web1.identity_file == "/opt/app/deploy/keys/id_ed25519"
    assert web2.identity_file == "/opt/app/deploy/keys/web2"
    assert web1.known_hosts == web2.known_hosts == "/opt/app/deploy/known"
    assert fleet.pool("www").source == "/opt/app/deploy/build/www"
    assert fleet.log_dir == "/opt/app/deploy/logs"


def test_the_default_source_is_also_beside_the_inventory(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data, "/opt/app/hosts.toml")
    assert fleet.pool("www").source == "/opt/app/build/www"


def test_absolute_and_home_paths_are_kept(inventory_data, build_fleet, monkeypatch):
    monkeypatch.setenv("HOME", "/home/deployer")
    inventory_data["defaults"].update(identity_file="~/.ssh/id", known_hosts="/etc/ssh/kh")
    host = build_fleet(inventory_data, "/opt/app/hosts.toml").hosts[0]
    assert (host.identity_file, host.known_hosts) == ("/home/deployer/.ssh/id", "/etc/ssh/kh")


def write_inventory(directory: Path, extra_defaults: str = "", extra_host: str = "") -> Path:
    path = directory / "hosts.toml"
    path.write_text(f'[defaults]\n{extra_defaults}\n[[hosts]]\nname = "web1"\n'
                    f'address = "198.18.0.11"\n{extra_host}\n[pools.www]\nreplicas = 2\n')
    return path


def test_load_finds_key_files_beside_the_inventory_from_another_directory(tmp_path, monkeypatch):
    (tmp_path / "id_ed25519").write_text("key")
    (tmp_path / "known_hosts").write_text("")
    path = write_inventory(tmp_path, 'identity_file = "id_ed25519"\nknown_hosts = "known_hosts"')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    host = inventory.load(path).hosts[0]
    assert host.identity_file == str(tmp_path / "id_ed25519")


@pytest.mark.parametrize(("where", "key"), [
    ("defaults", "identity_file"), ("defaults", "known_hosts"),
    ("hosts.web1", "identity_file"), ("hosts.web1", "known_hosts")])
def test_a_missing_key_file_is_an_inventory_error_naming_file_and_key(tmp_path, where, key):
    line = f'{key} = "keys/nope"'
    path = (write_inventory(tmp_path, extra_defaults=line) if where == "defaults"
            else write_inventory(tmp_path, extra_host=line))
    with pytest.raises(ConfigError) as info:
        inventory.load(path)
    assert str(info.value) == (f"{path}: {where}.{key}: file {tmp_path / 'keys' / 'nope'} "
                               "does not exist")
    assert info.value.exit_code == 2


# --- framework applications: document_root and front_controller -----------------------------

def test_document_root_defaults_to_the_release_root_and_front_controller_to_none(
        inventory_data, build_fleet):
    pool = build_fleet(inventory_data).pools[0]
    assert (pool.document_root, pool.front_controller) == ("", None)


@pytest.mark.parametrize(("value", "expected"), [
    ("public", "public"), ("public/", "public"), ("web/public_html", "web/public_html"),
    ("v1.2-app", "v1.2-app")])
def test_document_root_is_a_path_inside_the_release(inventory_data, build_fleet, value,
                                                    expected):
    inventory_data["pools"]["www"].update(document_root=value, front_controller="index.php")
    pool = build_fleet(inventory_data).pools[0]
    assert (pool.document_root, pool.front_controller) == (expected, "index.php")


@pytest.mark.parametrize(("value", "problem"), [
    ("/var/www/public", "must be relative to the release"),
    ("../public", "without '..'"),
    ("public/../..", "without '..'"),
    ("./public", "without '..' or a segment starting with '.'"),
    (".git", "segment starting with '.'"),
    ("public/.well-known", "segment starting with '.'"),
    ("public dir", "letters, digits"),
    ('pub"lic', "letters, digits"),
    ("pub\nlic", "letters, digits"),
    ("public$1", "letters, digits"),
    ("a//b", "letters, digits"),
])
def test_document_root_that_could_escape_the_release_or_break_apache_is_refused(
        inventory_data, config_error, value, problem):
    inventory_data["pools"]["www"]["document_root"] = value
    expect(config_error(inventory_data, FILE), "pools.www.document_root", problem)


@pytest.mark.parametrize(("value", "problem"), [
    ("index.html", "must be a .php file"),
    ("/index.php", "letters, digits"),
    ("../index.php", "without '..'"),
    (".index.php", "segment starting with '.'"),
    ("index php.php", "letters, digits"),
    ("index.php\n", "letters, digits"),
])
def test_front_controller_must_be_a_plain_php_file_inside_document_root(
        inventory_data, config_error, value, problem):
    inventory_data["pools"]["www"]["front_controller"] = value
    expect(config_error(inventory_data, FILE), "pools.www.front_controller", problem)


def test_pool_listen_on_the_manager_port_is_refused(inventory_data, config_error):
    inventory_data["hosts"][0]["apache"] = {"listen": "127.0.0.1:8081"}
    expect(config_error(inventory_data, FILE), "hosts.web1.apache.listen",
           "port 8081 is also the manager_port")


@pytest.mark.parametrize(("listen", "address", "port"), [
    ("*:80", "127.0.0.1", 80), ("0.0.0.0:8088", "127.0.0.1", 8088),
    ("198.18.0.11:80", "198.18.0.11", 80), ("127.0.0.1:8088", "127.0.0.1", 8088),
    ("[::]:8080", "[::1]", 8080), ("[::1]:81", "[::1]", 81), ("www.example:80", "www.example", 80)])
def test_local_address_reaches_the_public_vhosts_from_the_host_itself(
        inventory_data, build_fleet, listen, address, port):
    inventory_data["hosts"][0]["apache"] = {"listen": listen}
    apache = build_fleet(inventory_data).hosts[0].apache
    assert (apache.local_address, apache.port) == (address, port)


# --- normalised paths, overlapping pools, bounded numbers (issue 9, item 17) ------------------

def test_paths_are_normalised(inventory_data, build_fleet):
    inventory_data["defaults"]["root"] = "/srv//fpm-fleet/./"
    inventory_data["pools"]["www"].update(root="./www/", shared=["storage/./logs/"])
    fleet = build_fleet(inventory_data)
    assert fleet.hosts[0].root == "/srv/fpm-fleet"
    assert fleet.pools[0].root == "www" and fleet.pools[0].shared == ("storage/logs",)
    assert str(fleet.hosts[0].pool_dir(fleet.pools[0])) == "/srv/fpm-fleet/www"


@pytest.mark.parametrize("other", ["./www", "www/", "/srv/fpm-fleet/www", "www/api",
                                   "/srv/fpm-fleet"])
def test_two_pools_resolving_to_one_directory_or_nested_are_rejected(inventory_data,
                                                                     config_error, other):
    inventory_data["pools"]["api"] = {"replicas": 2, "root": other}
    message = config_error(inventory_data, FILE)
    assert message.startswith(f"{FILE}: pools: ")
    assert "duplicate root" in message or "overlapping directories on host web1" in message


@pytest.mark.parametrize("root", ["/", "//", ".", "./", "/./"])
def test_a_pool_root_of_slash_or_dot_is_rejected(inventory_data, config_error, root):
    inventory_data["pools"]["www"]["root"] = root
    expect(config_error(inventory_data, FILE), "pools.www.root", "other than '/' or '.'")


@pytest.mark.parametrize("item", [".", "./", "", "a/..", "/"])
def test_shared_items_must_name_something_inside_the_release(inventory_data, config_error,
                                                            item):
    inventory_data["pools"]["www"]["shared"] = [item]
    expect(config_error(inventory_data, FILE), "pools.www.shared", "must be a relative path")


def test_shared_items_inside_each_other_are_rejected(inventory_data, config_error):
    inventory_data["pools"]["www"]["shared"] = ["storage", "storage/logs/"]
    expect(config_error(inventory_data, FILE), "pools.www.shared", "overlap")


@pytest.mark.parametrize(("where", "key", "value"), [
    ("defaults", "connect_timeout", float("inf")),
    ("defaults", "connect_timeout", float("nan")),
    ("defaults", "command_timeout", float("inf")),
    ("defaults", "command_timeout", 10.0 ** 9),
    ("defaults", "connect_timeout", 10_000),
    ("defaults", "keep_releases", 10 ** 6),
    ("pool", "max_children", 10 ** 6),
])
def test_non_finite_or_absurd_numbers_are_rejected(inventory_data, config_error, where, key,
                                                   value):
    table = inventory_data["pools"]["www"] if where == "pool" else inventory_data["defaults"]
    table[key] = value
    message = config_error(inventory_data, FILE)
    assert f".{key}: must be" in message, message


@pytest.mark.parametrize("root", ["/srv/a:b", "/srv/a|b", "/srv/a*", "/srv/a?", "/srv/a[1]",
                                  "/srv/a>b", "/srv/a<b", "/srv/a\x01b", "/srv/a;b",
                                  "/srv/a#b", "/srv/\u00e9t\u00e9"])
def test_host_roots_with_characters_a_config_line_reads_specially_are_rejected(
        inventory_data, config_error, root):
    inventory_data["hosts"][0]["root"] = root
    expect(config_error(inventory_data, FILE), "hosts.web1.root", "only letters, digits")


@pytest.mark.parametrize(("key", "value"), [("root", "www:1"), ("root", "w w"),
                                            ("root", "www>"), ("php_fpm", "/usr/sbin/php:fpm"),
                                            ("php_fpm", "/usr/sbin/php-fpm*")])
def test_pool_paths_written_into_configs_are_checked_the_same_way(inventory_data, config_error,
                                                                  key, value):
    inventory_data["pools"]["www"][key] = value
    expect(config_error(inventory_data, FILE), f"pools.www.{key}", "only letters, digits")
