"""fpm_fleet.provision: what `fab check` concludes from each answer (no SSH: scripted
results)."""

from __future__ import annotations

import pytest
from fakes import FakeRunner

from fpm_fleet import provision
from fpm_fleet.core.errors import FleetError, RemoteResult
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote import shell
from fpm_fleet.web import apache_site


def result(stdout: str = "", stderr: str = "", exited: int = 0) -> RemoteResult:
    return RemoteResult("cmd", exited, stdout, stderr)


URL = "http://127.0.0.1:8088/health.php"


def test_vhost_answering_200_passes(web):
    _, pool = web
    check = provision.vhost_check("web1", pool, URL, result("200"))
    assert check == provision.Check("web1", "www: vhost", True,
                                    f"GET {URL} (Host: www): 200")


@pytest.mark.parametrize("status", ["404", "403", "503", "301"])
def test_vhost_answering_anything_but_200_fails_naming_the_pool_and_status(web, status):
    _, pool = web
    check = provision.vhost_check("web1", pool, URL, result(status))
    assert not check.ok
    assert check.name == "www: vhost"
    assert check.detail == f"GET {URL} (Host: www): HTTP {status}"


def test_vhost_that_does_not_answer_fails_with_curls_reason(web):
    _, pool = web
    err = "curl: (7) Failed to connect to 127.0.0.1 port 8088 after 0 ms: Couldn't connect"
    check = provision.vhost_check("web1", pool, URL, result("000", err, exited=7))
    assert not check.ok and check.detail == f"GET {URL} (Host: www): {err}"


def test_vhost_of_a_pool_never_deployed_is_not_requested(web):
    _, pool = web
    check = provision.vhost_check("web1", pool, URL, result(apache_site.NO_RELEASE + "\n"))
    assert check.ok and "no release deployed yet" in check.detail


def test_vhost_url_uses_the_listen_port_and_the_pools_health_path(inventory_data,
                                                                  build_fleet):
    inventory_data["hosts"][0]["apache"] = {"listen": "*:8088"}
    inventory_data["pools"]["www"]["health_path"] = "/health"
    fleet = build_fleet(inventory_data)
    assert provision.vhost_url(fleet.hosts[0], fleet.pools[0]) == "http://127.0.0.1:8088/health"


def by_purpose(host, answers: dict[str, RemoteResult], writes: bool = False) -> FakeRunner:
    """A runner answering each command by the start of the purpose the caller gave it (the
    rest succeed with no output); unless `writes`, any upload fails the test."""
    runner = FakeRunner(host, *answers.items())
    if not writes:
        runner.first(lambda call: call.stdin is not None, AssertionError("check never writes"))
    return runner


MODULES = "\n".join(f" {m} (shared)" for m in provision.REQUIRED_MODULES)


def apache_checks(host, fleet, **answers: RemoteResult) -> dict[str, provision.Check]:
    base = {"list Apache modules": result(MODULES),
            "check listen port": result(), "request www through Apache": result("200")}
    ex = by_purpose(host, {**base, **{k.replace("_", " "): v for k, v in answers.items()}})
    return {c.name: c for c in provision._check_web(ex, fleet, host)}


def test_check_requests_each_pool_through_apache_and_checks_the_listen_port(
        inventory_data, build_fleet):
    inventory_data["hosts"][0]["apache"] = {"listen": "127.0.0.1:8088"}
    fleet = build_fleet(inventory_data)
    host = fleet.hosts[0]
    ex = by_purpose(host, {"list Apache modules": result(MODULES),
                          "request www through Apache": result("200")})
    provision._check_web(ex, fleet, host)
    assert apache_site.tcp_listening(8088) in ex.commands
    assert any(c.startswith("if [ -e /srv/fpm-fleet/www/current.release ]; then curl")
               and "'Host: www'" in c and "http://127.0.0.1:8088/health.php" in c
               for c in ex.commands)


def test_check_fails_naming_the_pool_that_does_not_answer(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data)
    checks = apache_checks(fleet.hosts[0], fleet, request_www_through_Apache=result("503"))
    assert not checks["www: vhost"].ok
    assert "HTTP 503" in checks["www: vhost"].detail


def test_check_fails_when_nothing_listens_on_the_listen_port(inventory_data, build_fleet):
    inventory_data["hosts"][0]["apache"] = {"listen": "127.0.0.1:8088"}
    fleet = build_fleet(inventory_data)
    checks = apache_checks(fleet.hosts[0], fleet, check_listen_port=result(exited=1))
    assert checks["apache listen"] == provision.Check(
        "web1", "apache listen", False,
        "nothing listens on port 8088 (listen = 127.0.0.1:8088); run fab setup")


def test_check_wants_mod_rewrite(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data)
    loaded = MODULES.replace(" rewrite_module (shared)", "")
    checks = apache_checks(fleet.hosts[0], fleet, list_Apache_modules=result(loaded))
    assert checks["apache modules"].detail == "missing rewrite_module"


ROOT = result("0\n")


def recording(host, answers: dict[str, RemoteResult]) -> FakeRunner:
    return by_purpose(host, answers, writes=True)


def test_setup_refuses_a_host_without_systemd_before_changing_anything(inventory_data,
                                                                       build_fleet):
    fleet = build_fleet(inventory_data)
    ex = recording(fleet.hosts[0], {"check for root": ROOT,
                                    "check for systemd": result(exited=1)})
    with pytest.raises(FleetError, match="web1: this host was not booted with systemd"):
        provision.setup_host(ex, fleet, fleet.hosts[0])
    assert ex.commands == ["id -u", shell.has_systemd()]


def test_check_fails_the_systemd_line_on_a_host_without_systemd(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data)
    ex = recording(fleet.hosts[0], {"check for systemd": result(exited=1),
                                    "list Apache modules": result(MODULES)})
    checks = {c.name: c for c in provision.check_host(ex, fleet, fleet.hosts[0])}
    assert not checks["systemd"].ok
    assert "not booted with systemd" in checks["systemd"].detail


def test_setup_installs_the_units_and_stop_helper_then_reloads_systemd_once(inventory_data,
                                                                           build_fleet):
    fleet = build_fleet(inventory_data)
    ex = recording(fleet.hosts[0], {"check for root": ROOT,
                                    "enable replica services": result("fpm-fleet-www@1.service\n"),
                                    "is Apache running": result()})
    report = provision.setup_host(ex, fleet, fleet.hosts[0])
    assert "wrote /etc/systemd/system/fpm-fleet-www@.service" in report.changes
    assert "wrote /usr/local/lib/fpm-fleet/replica-stop" in report.changes
    assert "enabled fpm-fleet-www@1.service" in report.changes
    assert ex.commands.count(shell.daemon_reload()) == 1


def test_hand_over_leaves_the_lock_setup_itself_holds_alone(inventory_data, build_fleet):
    # setup takes the pools' locks as root; handing them to the deploy user every run would
    # make a second setup report a change
    fleet = build_fleet(inventory_data)
    layout = Layout.of(fleet.hosts[0], fleet.pools[0])
    assert "! -path '/srv/fpm-fleet/www/state/lock*'" in provision.hand_over(layout, "deploy")


def test_setup_keeps_the_deploy_users_systemd_manager_running(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data)
    user = fleet.hosts[0].user
    ex = recording(fleet.hosts[0], {"check for root": ROOT, f"linger {user}": result(f"{user}\n"),
                                    "is Apache running": result()})
    report = provision.setup_host(ex, fleet, fleet.hosts[0])
    assert provision.keep_user_manager(user) in ex.commands
    assert f"kept the systemd manager of {user} running (linger)" in report.changes


def test_a_second_setup_finds_linger_on_and_reports_no_change(inventory_data, build_fleet):
    fleet = build_fleet(inventory_data)
    ex = recording(fleet.hosts[0], {"check for root": ROOT, "is Apache running": result()})
    report = provision.setup_host(ex, fleet, fleet.hosts[0])
    assert not any("linger" in c for c in report.changes)


def test_keep_user_manager_enables_linger_only_when_it_is_off():
    assert provision.keep_user_manager("deploy") == (
        "[ -e /var/lib/systemd/linger/deploy ] || "
        "{ loginctl enable-linger -- deploy && printf '%s\\n' deploy; }")


@pytest.mark.parametrize(("exited", "kept"), [(0, True), (1, False)])
def test_check_says_whether_logins_start_a_systemd_manager(inventory_data, build_fleet,
                                                           exited, kept):
    fleet = build_fleet(inventory_data)
    ex = recording(fleet.hosts[0], {"check linger": result(exited=exited),
                                    "list Apache modules": result(MODULES)})
    checks = {c.name: c for c in provision.check_host(ex, fleet, fleet.hosts[0])}
    assert checks["linger"].ok, "slower without it, not wrong: never a failure"
    assert ("fab setup keeps it running" in checks["linger"].detail) is not kept
