"""Least privilege (issue 9, items 7, 8, 16, 22): what runs as root, and how.

Every task but `fab setup` runs as the login user; the only root commands a deploy runs are
the sudoers file's lines, word for word; `fab setup` needs full root and says so.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import threading
from dataclasses import replace
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest
from fakes import FakePool, FakeRunner, dry_run_deploy

from fpm_fleet import provision, render
from fpm_fleet.core import inventory
from fpm_fleet.core.errors import FleetError
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote import shell
from fpm_fleet.remote.ssh import SSHRunner
from fpm_fleet.web import apache_site


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "build"
    (src / "lib").mkdir(parents=True)
    (src / "index.php").write_text("<?php echo 1;\n")
    (src / "lib" / "a.php").write_text("a\n")
    return src


def deploy_and_rollback_commands(fleet: inventory.Fleet, source: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every command of a deploy of v2 over v1 and of a rollback to v0, as the real code
    runs them (a dry run over a simulated host: fakes.dry_run_deploy)."""
    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    fake = FakePool(fleet.hosts[0], fleet.pools[0])
    planned = dry_run_deploy(fake, source) + dry_run_deploy(fake, source, "v0", rollback=True)
    return [p.command for p in planned]


@pytest.fixture
def deploy_fleet(inventory_data: dict[str, Any]) -> inventory.Fleet:
    inventory_data["defaults"].update(user="deploy", setup_user="root")
    return inventory.parse(inventory_data)


# --- the runner ---------------------------------------------------------------------------------

class FakeChannel:
    """An exec channel whose command has already exited 0, silently."""

    def __init__(self) -> None:
        self.executed: list[str] = []
        self.eof_received = True
        self.closed = False
        self.status_event = threading.Event()
        self.status_event.set()
        self._wake = os.pipe()

    def fileno(self) -> int:
        return self._wake[0]  # never waited on: the command has exited

    def settimeout(self, _: float) -> None: ...
    def exec_command(self, command: str) -> None: self.executed.append(command)
    def shutdown_write(self) -> None: ...
    def close(self) -> None:
        for fd in self._wake:
            os.close(fd)

    def recv_ready(self) -> bool: return False
    def recv_stderr_ready(self) -> bool: return False
    def exit_status_ready(self) -> bool: return True
    def recv_exit_status(self) -> int: return 0


def test_the_runner_runs_commands_as_the_login_user_without_sudo(deploy_fleet):
    channel = FakeChannel()
    transport = SimpleNamespace(is_active=lambda: True, open_session=lambda timeout: channel)
    conn = SimpleNamespace(client=SimpleNamespace(get_transport=lambda: transport))
    # in an exec channel; the host shell runs a command's text the same way (its loop,
    # templates/sh/command-loop.sh, and test_hostshell.py)
    ex = SSHRunner(deploy_fleet.hosts[0], conn, host_shell=False)  # type: ignore[arg-type]
    ex.run("tar -xzf - -C /srv/fpm-fleet/www/incoming/v1.partial", "upload")
    # no sudo: only bounded on the host by the command timeout
    assert channel.executed == [
        "timeout -k 5 300 sh -c 'tar -xzf - -C /srv/fpm-fleet/www/incoming/v1.partial'"]


# --- the sudoers file ----------------------------------------------------------------------------

SUDO = re.compile(r"sudo -n -- ((?:systemctl|journalctl|apache2ctl)(?: [^;&|{}>]+?)?)"
                  r"(?= *(?:\|\||&&|;|2>|>|$))")


def sudo_lines(text: str) -> list[str]:
    """The Cmnd_Alias entries of a rendered sudoers file."""
    body = text.split("Cmnd_Alias FPM_FLEET =", 1)[1].split("\ndeploy ALL", 1)[0]
    return [e.strip(" \\\n") for e in body.split(",")]


def as_listed(command: str) -> str:
    argv = shlex.split(command)
    return " ".join((shell.SUDO_PATHS[argv[0]], *argv[1:]))


def test_every_root_command_of_a_deploy_or_rollback_is_a_line_of_the_sudoers_file(
        deploy_fleet, source, monkeypatch):
    host, pool = deploy_fleet.hosts[0], deploy_fleet.pools[0]
    commands = deploy_and_rollback_commands(deploy_fleet, source, monkeypatch)
    layout = Layout.of(host, pool)
    commands += [fpm.disable_command(layout, 1, host.sudo)]
    used = {as_listed(m) for c in commands for m in SUDO.findall(c)}
    assert commands and all(c.count("sudo ") == len(SUDO.findall(c)) for c in commands)
    assert {f"/usr/bin/systemctl {v} fpm-fleet-www@1.service" for v in ("start", "stop")} <= used
    rendered = render.sudoers(deploy_fleet, host)
    assert rendered is not None
    assert used <= set(sudo_lines(rendered.text))


def test_the_sudoers_file_names_whole_commands_without_wildcards_for_the_inventory_user(
        deploy_fleet):
    rendered = render.sudoers(deploy_fleet, deploy_fleet.hosts[0])
    assert rendered is not None
    assert (str(rendered.path), rendered.mode) == ("/etc/sudoers.d/fpm-fleet", "0440")
    lines = sudo_lines(rendered.text)
    assert len(lines) == 2 * len(shell.REPLICA_VERBS) + 2  # 2 replicas, configtest, graceful
    assert "/usr/bin/systemctl stop fpm-fleet-www@2.service" in lines
    assert "/usr/sbin/apache2ctl configtest" in lines
    assert not any(set(line) & set("*?[]") for line in lines)
    assert rendered.text.rstrip().endswith("deploy ALL=(root) NOPASSWD: FPM_FLEET")


@pytest.mark.skipif(not shutil.which("visudo"), reason="visudo is not installed here")
def test_the_rendered_sudoers_file_passes_visudo(deploy_fleet, tmp_path):
    rendered = render.sudoers(deploy_fleet, deploy_fleet.hosts[0])
    assert rendered is not None
    path = tmp_path / "fpm-fleet"
    path.write_text(rendered.text)
    proc = subprocess.run(["visudo", "-cf", str(path)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_root_login_gets_no_sudoers_file_and_runs_root_commands_as_is(inventory_data):
    fleet = inventory.parse(inventory_data)  # user = root
    assert render.sudoers(fleet, fleet.hosts[0]) is None
    layout = Layout.of(fleet.hosts[0], fleet.pools[0])
    assert "sudo" not in fpm.start_command(layout, 1, "v1", fleet.hosts[0].sudo)


def test_the_sudoers_file_refuses_a_word_sudoers_would_read_as_syntax(deploy_fleet):
    host = deploy_fleet.hosts[0]
    odd = replace(deploy_fleet, pools=(replace(deploy_fleet.pools[0], name="a,b"),))
    with pytest.raises(ValueError, match="sudoers"):
        render.sudoers(odd, host)


# --- fab setup: full root, and what it gives the deploy user -----------------------------------

def logged_in(host: inventory.Host, uid: str, stderr: str = "") -> FakeRunner:
    """A runner connected as some user; answers `id -u` with `uid`, every command with
    `stderr`."""
    def is_id(call) -> bool:
        return call.command.endswith(("id -u", "'id -u'"))

    return FakeRunner(host, (is_id, (0, uid, stderr)), default=(0, "", stderr))


def test_setup_logs_in_as_setup_user_and_runs_everything_through_full_sudo(inventory_data):
    inventory_data["defaults"].update(user="deploy", setup_user="admin")
    host = inventory.parse(inventory_data).hosts[0]
    login = provision.setup_login(host)
    assert (login.user, login.sudo, host.user) == ("admin", True, "deploy")
    ex = logged_in(login, "0\n")
    provision.AsRoot(ex).run("id -u", "check for root")
    assert ex.commands == ["sudo -n -- sh -c 'id -u'"]


def test_setup_without_full_root_fails_first_and_says_how_to_fix_it(deploy_fleet):
    host = replace(deploy_fleet.hosts[0], setup_user="deploy")
    ex = logged_in(provision.setup_login(host), "", "sudo: a password is required")
    with pytest.raises(FleetError) as info:
        provision.setup_host(ex, deploy_fleet, host)
    message = str(info.value)
    assert "fab setup needs full root" in message and "a password is required" in message
    assert 'setup_user = "root"' in message
    assert len(ex.commands) == 1, "nothing was changed before"


def test_setup_keeps_conf_run_and_the_pool_dir_roots_and_gives_the_rest_to_the_user():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert set(layout.deploy_owned()) == {layout.releases, layout.shared, layout.state,
                                          layout.incoming}
    command = provision.hand_over(layout, "deploy")
    assert "chown root:\"$g\" -- /srv/fpm-fleet/www && chmod 1775" in command
    assert "/srv/fpm-fleet/www/conf" not in command and "/srv/fpm-fleet/www/run" not in command
    assert "chown -h deploy:\"$g\"" in command  # current.release: the link, not its target
    assert ("for l in /srv/fpm-fleet/www/current.release /srv/fpm-fleet/www/previous.release"
            in command)
    # shared/ itself, not what the PHP workers wrote in it
    assert "find /srv/fpm-fleet/www/shared -maxdepth 0 " in command
    assert "set -- /srv/fpm-fleet/www/releases /srv/fpm-fleet/www/state " in command


def test_setup_makes_the_manager_credential_on_the_host_never_on_a_command_line():
    command = provision.manager_credential("deploy", "www-data")
    assert "/dev/urandom" in command and "htpasswd -c -i -B" in command  # password on stdin
    assert "chmod 0640 -- /etc/fpm-fleet/balancer-manager.netrc" in command
    assert 'chown root:"$g" -- /etc/fpm-fleet/balancer-manager.netrc' in command
    assert "chown root:www-data -- /etc/fpm-fleet/balancer-manager.htpasswd.tmp" in command


def test_balancer_manager_requires_the_credential_as_well_as_a_local_client(deploy_fleet):
    site = render.apache_files(deploy_fleet, deploy_fleet.hosts[0])[0].text
    manager = site.split('<Location "/balancer-manager">', 1)[1].split("</Location>", 1)[0]
    assert 'AuthUserFile "/etc/fpm-fleet/balancer-manager.htpasswd"' in manager
    assert re.search(r"<RequireAll>\s*Require local\s*Require user fpm-fleet\s*</RequireAll>",
                     manager)
    for module in ("auth_basic", "authn_file", "authz_user"):
        assert module in apache_site.APACHE_MODULES


# --- item 22: a refused first config leaves no enabled site -------------------------------------

FAKES = {
    "a2enmod": "exit 0",
    "a2ensite": 'ln -sf ../sites-available/fpm-fleet.conf "$ETC/sites-enabled/fpm-fleet.conf"',
    "a2dissite": 'rm -f "$ETC/sites-enabled/fpm-fleet.conf"',
    "apache2ctl": "echo 'AH00526: Syntax error' >&2; exit 1",
}


@pytest.mark.parametrize("enabled_before", [False, True])
def test_a_refused_apache_config_disables_the_site_only_if_it_was_not_enabled(
        tmp_path: Path, enabled_before: bool):
    bin_dir, etc = tmp_path / "bin", tmp_path / "etc"
    for d in (bin_dir, etc / "sites-enabled", etc / "sites-available"):
        d.mkdir(parents=True)
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    link = etc / "sites-enabled" / "fpm-fleet.conf"
    if enabled_before:
        link.symlink_to("../sites-available/fpm-fleet.conf")
    site = etc / "sites-available" / "fpm-fleet.conf"
    Path(f"{site}{shell.STAGED}").write_text("new\n")
    command = shell.install_checked([site], apache_site.apache_site_test(enabled_before))
    proc = subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=False,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "ETC": str(etc)})
    assert proc.returncode == 1 and "AH00526" in proc.stderr
    assert not site.exists()
    assert link.is_symlink() is enabled_before


# --- item 16: no fixed path in /tmp --------------------------------------------------------------

def test_no_remote_command_writes_a_fixed_path_in_tmp(deploy_fleet, source, monkeypatch):
    host, pool = deploy_fleet.hosts[0], deploy_fleet.pools[0]
    layout = Layout.of(host, pool)
    commands = deploy_and_rollback_commands(deploy_fleet, source, monkeypatch)
    commands += [provision.hand_over(layout, host.user), shell.install_sudoers("/x"),
                 provision.manager_credential(host.user, "www-data"),
                 shell.install_checked([PurePosixPath("/etc/x")],
                                       apache_site.apache_site_test(False)),
                 fpm.probe_command(layout, [1, 2])]
    assert not [c for c in commands if re.search(r"/tmp/|/var/tmp/", c)]


def test_setup_installs_the_sudoers_file_and_puts_the_user_in_apaches_and_phps_groups(
        inventory_data):
    inventory_data["defaults"].update(user="deploy", setup_user="root",
                                      apache={"group": "web"})
    fleet = inventory.parse(inventory_data)
    host = fleet.hosts[0]
    ex = logged_in(provision.setup_login(host), "0\n")
    report = provision.setup_host(ex, fleet, host)
    assert provision.join_groups("deploy", ["web", "www-data"]) in ex.commands
    assert shell.install_sudoers("/etc/sudoers.d/fpm-fleet") in ex.commands
    assert "wrote /etc/sudoers.d/fpm-fleet" in report.changes
    assert all("sudo -n" not in c for c in ex.commands), "a root login needs no sudo"


# --- fab check as the deploy user ---------------------------------------------------------------

@pytest.mark.skipif(not Path("/usr/sbin/apache2").exists(), reason="no /usr/sbin/apache2 here")
def test_check_finds_tools_in_sbin_although_a_deploy_users_path_lacks_it():
    proc = subprocess.run(["sh", "-c", shell.probe_tools()], capture_output=True, text=True,
                          check=True, env={"PATH": "/usr/bin:/bin"})
    assert "apache2\t/usr/sbin/apache2" in proc.stdout.splitlines()


def test_check_reads_the_enabled_modules_not_apache2ctl_which_needs_root():
    assert "apache2ctl" not in apache_site.apache_modules_loaded()
    assert "/etc/apache2/mods-enabled/" in apache_site.apache_modules_loaded()
