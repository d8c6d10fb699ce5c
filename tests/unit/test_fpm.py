"""fpm_fleet.host.fpm: parsers of cgi-fcgi output, FPM status JSON and the replica probe."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

import pytest
from fakes import EventLog, FakeRunner, replica_of, scripted

from fpm_fleet.core.errors import AnswerError, RolloutError
from fpm_fleet.host import fpm
from fpm_fleet.host.layout import Layout
from fpm_fleet.host.pool import HostPool
from fpm_fleet.rollout import replica as replica_steps

CONF = PurePosixPath("/srv/fpm-fleet/www/conf/www-1.conf")
TITLE = f"php-fpm: master process ({CONF})"

# --- FastCGI answers ---------------------------------------------------------------------------

def test_parse_fcgi_without_status_header_is_200_with_lowercased_headers():
    resp = fpm.parse_fcgi("X-Powered-By: PHP/8.2.36\r\nContent-type: text/plain;charset=UTF-8"
                          "\r\n\r\npong")
    assert resp.status == 200
    assert resp.headers == {"x-powered-by": "PHP/8.2.36",
                            "content-type": "text/plain;charset=UTF-8"}
    assert resp.body == "pong"


def test_parse_fcgi_reads_the_status_header():
    resp = fpm.parse_fcgi("Status: 404 Not Found\r\nContent-type: text/html\r\n\r\n"
                          "File not found.\n")
    assert resp.status == 404
    assert resp.body == "File not found.\n"


def test_parse_fcgi_with_plain_newlines_and_a_body_holding_blank_lines():
    resp = fpm.parse_fcgi("Status: 500 Internal Server Error\n\nline1\n\nline3")
    assert resp.status == 500
    assert resp.body == "line1\n\nline3"


def test_parse_fcgi_of_output_without_header_block_is_status_0():
    assert fpm.parse_fcgi("").status == 0
    resp = fpm.parse_fcgi("Could not connect to /srv/www-1.sock")
    assert (resp.status, resp.headers, resp.body) == (0, {}, "Could not connect to /srv/www-1.sock")


def test_parse_fcgi_with_an_unreadable_status_is_0():
    assert fpm.parse_fcgi("Status: teapot\r\n\r\n").status == 0


# --- FPM status --------------------------------------------------------------------------------

STATUS = {"pool": "www-1", "process manager": "static", "start time": 1700000000,
          "start since": 42, "accepted conn": 1234, "listen queue": 0, "max listen queue": 3,
          "listen queue len": 511, "idle processes": 7, "active processes": 1,
          "total processes": 8, "max active processes": 8, "max children reached": 0,
          "slow requests": 0}


def test_parse_status_reads_active_idle_total_accepted_and_queue():
    status = fpm.parse_status(json.dumps(STATUS))
    assert status == fpm.FpmStatus(active=1, idle=7, total=8, accepted=1234, listen_queue=0)


@pytest.mark.parametrize("body", ["", "pong", "<html>", "[]", "null", '{"pool": "www-1"}',
                                  json.dumps({**STATUS, "active processes": "many"})])
def test_parse_status_of_anything_else_is_a_value_error_quoting_the_answer(body):
    with pytest.raises(ValueError, match="unexpected FPM status answer"):
        fpm.parse_status(body)


# --- the probe ---------------------------------------------------------------------------------

def test_parse_probe_reads_one_process_per_replica_line():
    out = (f"1\t4242\tS\t3600\t{TITLE}\t/srv/fpm-fleet/www/releases/v7\tactive\t0\n"
           "2\t-\t-\t-\t-\t-\tinactive\t0\n")
    procs = fpm.parse_probe(out)
    assert procs[1] == fpm.Process(1, 4242, "S", 3600, TITLE, "/srv/fpm-fleet/www/releases/v7",
                                   "active", 0)
    assert procs[1].release == "v7"
    assert procs[1].alive
    assert procs[1].is_master_of(CONF)
    assert procs[2] == fpm.Process(2, None, "-", None, "", None, "inactive", 0)
    assert procs[2].release is None
    assert not procs[2].alive


def test_parse_probe_reads_the_service_state_and_the_stray_worker_count():
    out = "1\t-\t-\t-\t-\t-\tactivating\t3\n2\t-\t-\t-\t-\t-\t-\t?\n"
    procs = fpm.parse_probe(out)
    assert (procs[1].service, procs[1].strays) == ("activating", 3)
    assert (procs[2].service, procs[2].strays) == ("-", 0)  # no systemctl, unreadable count


def test_parse_probe_skips_noise_and_malformed_lines():
    out = ("sh: 1: ps: not found\n\n1\t10\tS\n"
           "2\t10\tS\t1\tt\t-\n"  # the 6 fields of a probe older than the service
           "3\t11\tS\t1\tt\t-\tactive\t0\n"
           "x\t1\t2\t3\t4\t5\t6\t7\n")
    assert list(fpm.parse_probe(out)) == [3]


def test_parse_probe_marks_a_deleted_pinned_release():
    out = f"1\t4242\tS\t5\t{TITLE}\t/srv/fpm-fleet/www/releases/v3//deleted\tactive\t0\n"
    proc = fpm.parse_probe(out)[1]
    assert proc.release == "v3"
    assert proc.release_deleted


def test_parse_probe_unescapes_a_mountinfo_path_with_a_space():
    out = f"1\t4242\tS\t5\t{TITLE}\t/srv/fpm\\040fleet/www/releases/v1\tactive\t0\n"
    proc = fpm.parse_probe(out)[1]
    assert proc.pinned == "/srv/fpm fleet/www/releases/v1"
    assert proc.release == "v1"
    assert not proc.release_deleted


def test_parse_probe_keeps_a_pid_with_unknown_elapsed_and_title():
    proc = fpm.parse_probe("1\t99\tR\t-\t-\t-\tactive\t0\n")[1]
    assert (proc.pid, proc.elapsed, proc.title, proc.pinned) == (99, None, "", None)
    assert proc.alive
    assert not proc.is_master_of(CONF)


@pytest.mark.parametrize("state", ["Z", "X", "-"])
def test_zombie_dead_or_unknown_state_is_not_alive(state):
    assert not fpm.Process(1, 10, state, 1, TITLE, None).alive


def test_is_master_of_needs_the_exact_config_path():
    proc = fpm.Process(1, 10, "S", 1, TITLE, None)
    assert proc.is_master_of(CONF)
    assert not proc.is_master_of(PurePosixPath("/srv/fpm-fleet/www/conf/www-11.conf"))
    worker = fpm.Process(1, 10, "S", 1, "php-fpm: pool www-1", None)
    assert not worker.is_master_of(CONF)


def test_the_master_title_the_parser_expects_names_the_replicas_config():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    assert fpm.FPM_MASTER_TITLE.format(conf=layout.fpm_conf(1)) == TITLE


def test_the_probe_and_stop_commands_name_the_replicas_service_and_worker_title():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    probe = fpm.probe_command(layout, [1])
    assert "$(systemctl is-active fpm-fleet-www@1.service 2>/dev/null)" in probe
    assert "count_strays \"$_pid1 \"'php-fpm: pool www-1'" in probe
    assert '$(mount_roots /srv/fpm-fleet/www/current "$_pid1")' in probe
    assert probe.endswith('probe 1 "$_pid1" "$_pinned1" "$_unit1" "$_strays1"')
    stop = fpm.stop_command(layout, 1, sudo=False)
    assert "systemctl stop fpm-fleet-www@1.service || exit 1;" in stop
    assert ("count_workers_outside \"$(systemctl show -p MainPID --value "
            "fpm-fleet-www@1.service)\" 'php-fpm: pool www-1'") in stop


# --- commands over a runner ---------------------------------------------------------------------

def replica(runner: FakeRunner, pool, n: int):
    return replica_of(runner, pool, n)


@pytest.mark.parametrize(("answer", "ok"), [
    ((0, "Content-type: text/plain\r\n\r\npong"), True),
    ((0, "Content-type: text/plain\r\n\r\npong\n"), True),
    ((0, "Status: 404 Not Found\r\n\r\npong"), False),
    ((0, "Content-type: text/plain\r\n\r\nFile not found."), False),
    ((124, ""), False),
])
def test_ping_is_true_only_for_200_pong_over_the_replica_socket(web, answer, ok):
    host, pool = web
    runner = scripted(host, answer)
    assert runner.ask(fpm.ping(replica(runner, pool, 2))) is ok
    assert runner.commands == [fpm.fcgi_command("/srv/fpm-fleet/www/run/www-2.sock",
                                                  "/fpm-ping", "/fpm-ping")]


def test_status_asks_the_separate_status_socket_for_json(web):
    host, pool = web
    runner = scripted(host, (0, "Content-type: application/json\r\n\r\n" + json.dumps(STATUS)))
    assert runner.ask(fpm.fpm_status(replica(runner, pool, 1))) == fpm.FpmStatus(1, 7, 8, 1234, 0)
    assert "/srv/fpm-fleet/www/run/www-1-status.sock" in runner.commands[0]
    assert "QUERY_STRING=json" in runner.commands[0]


def test_status_that_does_not_answer_is_none(web):
    host, pool = web
    runner = scripted(host, (124, ""))
    assert runner.ask(fpm.fpm_status(replica(runner, pool, 1))) is None


def test_health_runs_the_apps_script_from_the_pinned_current_dir(web):
    host, pool = web
    runner = scripted(host, (0, "Status: 200 OK\r\n\r\nok v7"))
    resp = runner.ask(fpm.health(replica(runner, pool, 1)))
    assert resp is not None and resp.body == "ok v7"
    assert "SCRIPT_FILENAME=/srv/fpm-fleet/www/current/health.php" in runner.commands[0]


@pytest.mark.parametrize(("out", "outcome", "strays", "said"), [
    ("stopped\n", fpm.StopOutcome.STOPPED, False, "stopped"),
    ("escalated\nstopped\n", fpm.StopOutcome.ESCALATED, False, "escalated"),
    ("not-running\n", fpm.StopOutcome.NOT_RUNNING, False, "not-running"),
    ("strays 2\nstopped\n", fpm.StopOutcome.STOPPED, True,
     "stopped, workers of a dead master stopped"),
])
def test_stop_reports_what_the_stop_command_printed(web, out, outcome, strays, said):
    host, pool = web
    runner = scripted(host, (0, out))
    stopped = runner.ask(fpm.stop(replica(runner, pool, 1)))
    assert stopped == fpm.Stopped(outcome, strays)
    assert str(stopped) == said


def test_an_unexpected_stop_answer_is_an_answer_error_naming_the_host_and_the_stop(web):
    host, pool = web
    runner = scripted(host, (0, "Terminated\n"))
    with pytest.raises(AnswerError, match=r"^web1: stop www-1: unexpected answer from the stop"):
        runner.ask(fpm.stop(replica(runner, pool, 1)))


def test_stop_waits_for_systemds_stop_timeout_plus_a_margin(inventory_data, build_fleet):
    inventory_data["pools"]["www"]["stop_timeout"] = 90
    fleet = build_fleet(inventory_data)
    host, pool = fleet.hosts[0], fleet.pools[0]
    runner = scripted(host, (0, "stopped\n"))
    runner.ask(fpm.stop(replica(runner, pool, 1)))
    assert [c.timeout for c in runner.calls] == [120]


def test_start_runs_the_start_command_for_the_release_it_was_given(web):
    host, pool = web
    runner = scripted(host, (0, ""))
    runner.ask(fpm.start(replica(runner, pool, 2), "v7"))
    assert runner.commands == [fpm.start_command(Layout.of(host, pool), 2, "v7", host.sudo)]


def test_a_failing_start_is_a_rollout_error_naming_the_replica(web):
    host, pool = web
    runner = scripted(host, (3, "", "current.release does not name v7"))
    with pytest.raises(RolloutError, match=r"web1: www-2 did not start: .*does not name v7"):
        replica_steps.start(replica(runner, pool, 2), "v7", EventLog())


def test_disable_keeps_the_replica_stopped_at_the_next_boot(web):
    host, pool = web
    runner = scripted(host, (0, ""))
    runner.ask(fpm.disable(replica(runner, pool, 2)))
    assert runner.commands == ["systemctl disable --no-reload --quiet fpm-fleet-www@2.service"]


def test_a_failing_stop_command_is_a_rollout_error(web):
    host, pool = web
    runner = scripted(host, (1, "", "Failed to stop fpm-fleet-www@1"))
    with pytest.raises(RolloutError, match="www-1 could not be stopped"):
        replica_steps.stop(replica(runner, pool, 1), EventLog())


def test_current_release_is_the_basename_of_the_symlink_or_none(web):
    host, pool = web
    runner = scripted(host, (0, "releases/v7\n"), (1, ""))
    at = HostPool(runner, host, pool)
    assert runner.ask(fpm.current_release(at)) == "v7"
    assert runner.ask(fpm.current_release(at)) is None


def test_probe_fills_in_replicas_the_host_did_not_report(web):
    host, pool = web
    runner = scripted(host, (0, f"1\t4242\tS\t5\t{TITLE}\t-\tactive\t0\n"))
    procs = runner.ask(fpm.probe(HostPool(runner, host, pool)))
    assert sorted(procs) == [1, 2]
    assert procs[1].pid == 4242
    assert procs[2].pid is None and not procs[2].alive


def test_a_set_starts_resetting_only_the_units_said_failed_and_stops_without_disable_if_told():
    layout = Layout(dir=PurePosixPath("/srv/fpm-fleet/www"), pool="www")
    start = fpm.start_set_command(layout, [3, 4], "v2", sudo=False, enable=False, reset={4})
    assert "reset-failed fpm-fleet-www@4.service 2>/dev/null" in start
    assert "reset-failed fpm-fleet-www@3.service 2>/dev/null" not in start
    assert "reset-failed fpm-fleet-www@3.service" in fpm.start_set_command(layout, [3, 4], "v2",
                                                                           sudo=False)
    assert "disable" in fpm.stop_set_command(layout, [3], sudo=False)
    assert "disable" not in fpm.stop_set_command(layout, [3], sudo=False, disable=False)
