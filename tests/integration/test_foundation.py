"""Foundation on a real 2-host sandbox: setup is idempotent, check passes, Apache serves the
demo app on every host, and sandbox.down leaves nothing behind."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from fpm_fleet.sandbox.hosts import HOSTS_DIR

from .conftest import SANDBOX, Sandbox, bring_up, fab, get, ok, tear_down


def test_setup_rewrites_what_changed_and_a_second_run_changes_nothing(fleet2: Sandbox) -> None:
    conf = fleet2.pool_dir(0) / "conf" / "www-1.conf"
    conf.write_text("; tampered\n")
    unit = fleet2.on_host("/etc/systemd/system/fpm-fleet-www@.service")
    unit.unlink()
    fleet2.run(0, "systemctl", "disable", "fpm-fleet-www@2.service")
    fleet2.run(0, "loginctl", "disable-linger", "deploy")

    def apache_pid() -> str:
        return fleet2.run(0, "systemctl", "show", "-p", "MainPID", "--value",
                          "apache2").stdout.strip()

    before = apache_pid()
    first = ok(fab("setup"))
    said = re.sub(r"[\s│┃]+", "", first.stdout)  # the table may wrap a change anywhere
    assert f"wrote{fleet2.remote_pool_dir(0) / 'conf' / 'www-1.conf'}" in said
    assert "wrote/etc/systemd/system/fpm-fleet-www@.service" in said
    assert "enabledfpm-fleet-www@2.service" in said
    # the deploy user's systemd manager outlives its logins: no run starts and stops it
    assert "keptthesystemdmanagerofdeployrunning(linger)" in said
    assert fleet2.run(0, "test", "-e", "/var/lib/systemd/linger/deploy").returncode == 0
    assert fleet2.run(0, "systemctl", "is-enabled", "fpm-fleet-www@2.service").returncode == 0
    assert "[global]" in conf.read_text() and unit.exists()
    second = ok(fab("setup"))
    assert second.stdout.count("nothing changed") == 2, second.stdout
    assert "reloaded" not in second.stdout
    assert apache_pid() == before, "Apache was restarted although its config did not change"


def test_the_replica_units_pass_systemd_analyze_verify_on_a_host(fleet2: Sandbox) -> None:
    verify = fleet2.run(0, "systemd-analyze", "verify", "fpm-fleet-www@1.service")
    assert (verify.returncode, verify.stderr.strip()) == (0, ""), verify.stderr


def test_check_passes_on_every_host(fleet2: Sandbox) -> None:
    proc = ok(fab("check"))
    for host in ("h1", "h2"):
        assert host in proc.stdout
    assert "FAIL" not in proc.stdout
    assert "via sudo" in proc.stdout
    assert "systemd" in proc.stdout
    assert "balancer://www: 2 members" in proc.stdout


def test_every_host_serves_ping_and_static_release_through_its_apache(fleet2: Sandbox) -> None:
    for address in fleet2.addresses():
        status, body = get(address, "/ping.php")
        assert status == 200 and body.startswith("pong v1"), body
        status, body = get(address, "/release.txt")
        assert (status, body.strip()) == (200, "v1")


def test_balancer_manager_is_not_reachable_from_outside_the_host(fleet2: Sandbox) -> None:
    address = fleet2.addresses()[0]
    probe = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                            "--max-time", "3", f"http://{address}:8081/balancer-manager"],
                           capture_output=True, text=True, check=False)
    assert probe.stdout in ("000", "403"), probe.stdout
    status, _ = get(address, "/balancer-manager")
    assert status == 404


def test_an_apache_config_that_fails_its_test_is_not_installed(fleet2: Sandbox,
                                                              tmp_path: Path) -> None:
    site = fleet2.on_host("/etc/apache2/sites-available/fpm-fleet.conf")
    enabled = fleet2.on_host("/etc/apache2/sites-enabled/fpm-fleet.conf")
    before = site.read_text()
    # an operator's own config that also listens on balancer-manager's port: with it, any
    # site fpm-fleet writes fails configtest (two Listen for one address)
    clash = fleet2.on_host("/etc/apache2/conf-enabled/zz-operator.conf")
    clash.write_text("Listen 127.0.0.1:8081\n")
    inv = tmp_path / "hosts.toml"
    inv.write_text(fleet2.path.read_text().replace("[pools.www]",
                                                   '[pools.www]\nserver_name = "www.test"'))
    try:
        proc = fab("setup", "--host", "h1", inventory_path=inv)
    finally:
        clash.unlink()
    assert proc.returncode != 0
    assert "fails its test and was not installed" in proc.stdout + proc.stderr
    assert "Listen" in proc.stdout + proc.stderr, "the error says what Apache refused"
    assert site.read_text() == before and enabled.is_symlink()
    assert get(fleet2.addresses()[0], "/ping.php")[0] == 200
    assert not list(site.parent.glob("*.fpm-fleet-*")), "no staged or backup file is left"


def test_a_first_setup_whose_apache_config_fails_leaves_no_site_enabled(fleet2: Sandbox) -> None:
    """A fresh host (no fpm-fleet site yet) whose Apache refuses the new config: the site
    is not installed, and no sites-enabled link is left pointing at nothing."""
    site = fleet2.on_host("/etc/apache2/sites-available/fpm-fleet.conf")
    enabled = fleet2.on_host("/etc/apache2/sites-enabled/fpm-fleet.conf")
    assert fleet2.run(0, "a2dissite", "-q", "fpm-fleet").returncode == 0
    site.unlink()
    clash = fleet2.on_host("/etc/apache2/conf-enabled/zz-operator.conf")
    clash.write_text("Listen 127.0.0.1:8081\n")
    try:
        proc = fab("setup", "--host", "h1")
    finally:
        clash.unlink()
    assert proc.returncode != 0
    assert "fails its test and was not installed" in proc.stdout + proc.stderr
    assert not site.exists()
    assert not enabled.is_symlink(), "a dangling sites-enabled link was left"
    ok(fab("setup", "--host", "h1"))
    assert enabled.is_symlink() and site.exists()
    assert get(fleet2.addresses()[0], "/ping.php")[0] == 200


def test_up_twice_and_down_twice_are_harmless() -> None:
    """Last in this module: it replaces the module's fleet by its own and removes it."""
    box = bring_up(2)
    again = ok(fab("sandbox.up", "--hosts", "2", "--strategy", "rolling", inventory_path=None))
    assert "2 hosts" in again.stderr
    assert get(box.addresses()[1], "/ping.php")[0] == 200
    assert tear_down() == []
    ok(fab("sandbox.down", inventory_path=None))
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "fpmf-" not in netns
    assert not SANDBOX.exists() and not HOSTS_DIR.exists()
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(SANDBOX) not in mounts and str(HOSTS_DIR) not in mounts
    assert not list(Path("/sys/fs/cgroup/systemd").glob("fpmf-*"))

