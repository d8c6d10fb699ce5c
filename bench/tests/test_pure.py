"""The benchmark's pure parts: parsers, config edit, window statistics, tables."""

from __future__ import annotations

import pytest

from bench import fpmconf, reload, render, steps
from bench.load import Clock, Span, judge, summarize
from fpm_fleet.stress import demo_loops

RESTART_OUTPUT = """\
[h1] www-1 guard ok 0.014s
[h1] www-1 drain ok 0.023s  Init Drn Ok
[h1] www-1 wait idle ok 1.455s  1.45s
[h1] www-1 stop ok 0.029s  stopped
[h1] www-1 start ok 0.028s  pinned v1
[h1] www-1 health ok 0.030s
[h1] www-1 enable ok 0.024s  Init Ok
[h1] www-2 wait idle ok 0.500s  0.50s (Busy=1 is stale: FPM idle for 1s)
[h1] www-2 start ok 0.032s  pinned v1
[h2] www-1 stop FAILED 0.100s  boom
log: /tmp/x.log
"""


def test_parse_keeps_only_finished_replica_steps() -> None:
    found = steps.parse(RESTART_OUTPUT)
    assert [s.step for s in found[:7]] == list(steps.STEPS)
    assert found[2] == steps.StepTime("h1", "www-1", "wait idle", 1.455)
    assert len(found) == 9  # the FAILED line and the log line are not steps


def test_cost_is_wall_minus_wait_idle_and_start_per_replica() -> None:
    c = steps.cost("t", 3.0, steps.parse(RESTART_OUTPUT))
    assert c.replicas == 2
    assert c.unavoidable_s == pytest.approx(1.455 + 0.028 + 0.5 + 0.032, abs=0.01)
    assert c.overhead_per_replica_ms == pytest.approx((3.0 - 2.015) / 2 * 1000, abs=1)
    assert c.step_median_ms["wait idle"] == pytest.approx(977.5)


CONF = """; header
[global]
pid = "/x/run/www-1.pid"
process_control_timeout = 60s

[www-1]
user = www-data
"""


def test_setting_replaces_the_one_in_global_and_nothing_else() -> None:
    text = fpmconf.with_global(CONF, "process_control_timeout", "0")
    assert text == CONF.replace("process_control_timeout = 60s", "process_control_timeout = 0")


def test_a_new_setting_goes_at_the_end_of_global_not_into_the_pool() -> None:
    text = fpmconf.with_global(CONF, "daemonize", "no")
    assert text.splitlines()[4] == "daemonize = no"
    assert text.index("daemonize") < text.index("[www-1]")
    assert text.replace("daemonize = no\n", "") == CONF


def test_a_repeated_setting_is_left_once() -> None:
    conf = "[global]\na = 1\nb = 2\na = 3\n[p]\na = 4\n"
    assert fpmconf.with_global(conf, "a", "9") == "[global]\na = 9\nb = 2\n[p]\na = 4\n"


def test_config_without_global_is_refused() -> None:
    with pytest.raises(ValueError):
        fpmconf.with_global("[www]\nuser = x\n", "a", "b")


STATUS = ("Content-type: application/json\r\nExpires: Thu, 01 Jan 1970 00:00:00 GMT\r\n\r\n"
          '{"pool":"www-1","process manager":"static","start time":1764270000,'
          '"start since":12,"accepted conn":3}')


def test_start_time_comes_from_the_status_page() -> None:
    assert reload.start_time(STATUS) == 1764270000


def test_no_start_time_while_the_status_page_does_not_answer() -> None:
    assert reload.start_time("") is None
    assert reload.start_time("Status: 503 Service Unavailable\r\n\r\nbusy") is None
    assert reload.start_time("Content-type: text/plain\r\n\r\npool: www-1\n") is None


def test_the_reload_signals_every_master_of_a_host_in_one_kill() -> None:
    assert reload.signal_command([101, 202]) == "kill -USR2 101 202"


def test_the_status_request_asks_the_replica_status_socket_for_json() -> None:
    from fpm_fleet.core.inventory import parse

    fleet = parse({"hosts": [{"name": "h1", "address": "198.18.0.11"}],
                   "pools": {"www": {"replicas": 2, "source": "/tmp/src"}}})
    cmd = reload.status_request(fleet.hosts[0], fleet.pools[0], 2)
    assert "-connect /srv/fpm-fleet/www/run/www-2-status.sock" in cmd
    assert "QUERY_STRING=json" in cmd and cmd.startswith("timeout 10 ")


def test_plain_tar_unpacks_as_the_login_user_like_fpm_fleet_itself() -> None:
    from pathlib import PurePosixPath

    from bench import upload

    dest = PurePosixPath("/srv/fpm-fleet/www/incoming/bench tar")
    assert upload.tar_extract(dest) == (
        "mkdir -p '/srv/fpm-fleet/www/incoming/bench tar' && "
        "tar -xzf - -C '/srv/fpm-fleet/www/incoming/bench tar'")


def test_boot_and_base_build_times_are_read_from_sandbox_up() -> None:
    from bench import sandbox

    stderr = ("built the hosts' base tree in 73s (/var/cache/x; reused from now on)\n"
              "3 hosts booted in 4.2s: h1 running, h2 running, h3 running\n")
    assert sandbox.reported_seconds(sandbox.BOOTED, stderr, 2) == 4.2
    assert sandbox.reported_seconds(sandbox.BASE_BUILT, stderr) == 73.0
    assert sandbox.reported_seconds(sandbox.BASE_BUILT, "3 hosts booted in 4.2s") is None


def test_judge_and_kind_follow_the_load_generator() -> None:
    clock = Clock(demo_loops(slow_ms=2000))
    assert clock.kinds == {"/ping.php": "fast", "/sleep.php?ms=2000": "slow",
                           "/atomic.php?ms=1000": "atomic"}
    assert judge("fast", 503, "") == "HTTP 503"
    assert judge("atomic", 200, "part1 v1\npart2 v2\n") == "mixed releases"
    assert judge("atomic", 200, "part1 v1\npart2 v1\n") == ""


def test_summary_counts_in_flight_failures_and_cut_short_requests() -> None:
    spans = [Span("h1", "slow", 0.0, 2.0), Span("h1", "slow", 0.5, 1.0),
             Span("h1", "atomic", 0.2, 1.1, "HTTP 503"), Span("h2", "fast", 1.0, 1.002),
             Span("h2", "fast", 1.1, 1.2, "RemoteDisconnected")]
    w = summarize("s", spans, acted=0.9, slow_ms=2000)
    assert (w.requests, w.failed, w.slow_in_flight) == (5, 2, 3)
    assert w.reasons == {"atomic: HTTP 503": 1, "fast: RemoteDisconnected": 1}
    assert w.failed_per_host == {"h1": 1, "h2": 1}
    assert (w.failures_from_s, w.failures_to_s) == (0.2, 0.3)
    assert w.slow_cut_short == 1
    assert w.fast_max_ms == pytest.approx(2.0, abs=0.01)


def test_markdown_escapes_pipes() -> None:
    text = render.to_markdown(render.Table("T", ["a", "b"], [["x | y", "1"]], "note"))
    assert "| x \\| y | 1 |" in text
    assert text.startswith("### T\n")


def test_downtime_row_totals_failures_and_keeps_the_worst_latency() -> None:
    from bench.load import Window
    from bench.tables import downtime_row

    ws = [Window("r", round=1, requests=10, failed=2, reasons={"slow: HTTP 503": 2},
                 fast_p50_ms=1.0, fast_p99_ms=5.0, fast_max_ms=9.0, action_seconds=0.1,
                 action_detail="x"),
          Window("r", round=2, requests=20, failed=1, reasons={"slow: HTTP 503": 1},
                 fast_p50_ms=3.0, fast_p99_ms=4.0, fast_max_ms=30.0, action_seconds=0.2,
                 action_detail="x")]
    row = downtime_row("r", ws)
    assert row[4:8] == ["30", "3", "2 / 1", "slow: HTTP 503 x3"]
    assert row[8:11] == ["2.0", "5.0", "30.0"]
    assert row[-1] == "ok, 0.10-0.20 s"


def test_the_machine_note_says_how_busy_it_was_and_what_the_fleet_cost() -> None:
    from bench.results import Results
    from bench.tables import fleet_note, load_note

    assert load_note([0.5, 3.0, 4.0, 2.0]) == (
        "1-minute load average 0.5 when the run began, median 2.5 and max 4.0 during it "
        "(4 samples, 10 s apart; the fleet and the load generator count)")
    assert load_note([]) == "load average not sampled"
    r = Results("full", base_build_s=73.4, fleet_up_s=6.9, fleet_boot_s=1.0)
    assert fleet_note(r) == ("the hosts' base tree was built in this run: 73 s; fab sandbox.up "
                             "of the measured fleet 6.9 s, of which booting its hosts 1.0 s")
    assert fleet_note(Results("quick")).startswith("the hosts' base tree was already built")


def test_load_is_sampled_at_once_and_stops_with_the_block() -> None:
    import time

    from bench import machine

    with machine.load_samples(every=0.01) as samples:
        pass
    count = len(samples)
    assert count >= 1
    time.sleep(0.05)
    assert len(samples) == count


def test_the_scale_table_shows_the_machines_cpu_time_beside_the_wall_time() -> None:
    from bench.results import Results
    from bench.scale import Cpu, ScaleRow
    from bench.tables import scale

    rows = [ScaleRow(1, 2, 9.0, 1.0, 0.98, 1.02, 0.5, None, 0.87, Cpu(1.41, 0.6),
                     Cpu(1.2, 0.55)),
            ScaleRow(6, 12, 20.0, 2.0, 4.6, 2.89, 0.9, None, None, None, None)]
    table = scale(Results("full", machine={"cpus": "2"}, scale=rows))
    assert table.rows[0][-3:] == ["0.87", "1.41 (0.60)", "1.20 (0.55)"]
    assert table.rows[1][-3:] == ["-", "-", "-"]
    assert "share this machine's 2 CPUs, so CPU s / 2 is a floor" in table.note


def test_the_machines_cpu_time_grows_with_work_done() -> None:
    import time

    from bench.machine import cpu_seconds

    before, until = cpu_seconds(), time.monotonic() + 0.3
    while time.monotonic() < until:  # 0.3 s of this process's own CPU, at least
        pass
    assert cpu_seconds() - before >= 0.2  # the counters tick every 10 ms
