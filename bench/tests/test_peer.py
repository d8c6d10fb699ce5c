"""The peer section's pure parts: time to new, the host scripts, the order, the table."""

from __future__ import annotations

import subprocess
from pathlib import Path, PurePosixPath

from bench import peer, tables
from bench.load import Span, Window, answered_by, time_to_new
from bench.profile import QUICK
from fpm_fleet.core.inventory import Fleet


def span(start: float, release: str = "", reason: str = "") -> Span:
    return Span("h1", "fast", start, start + 0.01, reason, release)


def test_answers_name_their_release_atomic_only_when_consistent() -> None:
    assert answered_by("fast", "pong v2 pid=12\n") == "v2"
    assert answered_by("slow", "slept 2000ms v2 pid=1 asked=2000ms\n") == "v2"
    assert answered_by("atomic", "part1 v2\npart2 v2\n") == "v2"
    assert answered_by("atomic", "part1 v1\npart2 v2\n") == ""
    assert answered_by("fast", "<html>") == ""


def test_time_to_new_is_the_first_new_answer_after_the_last_other() -> None:
    spans = [span(9.0, "v1"), span(10.5, "v2"), span(11.0, "v1"), span(11.2, "v2"),
             span(12.0, "v2")]
    assert time_to_new(spans, "v2", since=10.0) == 1.2


def test_a_failure_after_the_switch_counts_against_the_new_release() -> None:
    spans = [span(10.5, "v2"), span(11.0, reason="HTTP 503"), span(11.4, "v2")]
    assert time_to_new(spans, "v2", since=10.0) == 1.4


def test_answers_naming_no_release_are_left_out_and_never_new_is_none() -> None:
    assert time_to_new([span(10.5, ""), span(10.6, "v2")], "v2", since=10.0) == 0.6
    assert time_to_new([span(10.5, "v1")], "v2", since=10.0) is None


def test_time_to_new_is_never_negative() -> None:
    assert time_to_new([span(9.5, "v2")], "v2", since=10.0) == 0.0


SITE = peer.CapSite(("fpm-fleet-www@1.service", "fpm-fleet-www@2.service"),
                    PurePosixPath("/srv/fpm-fleet/www/current"),
                    PurePosixPath("/srv/capistrano/www"),
                    PurePosixPath("/etc/systemd/system/fpm-fleet-www@.service.d/x.conf"))


def test_rounds_alternate_fpm_fleet_first() -> None:
    assert peer.order(2) == [(1, "fab"), (1, "cap"), (2, "fab"), (2, "cap")]


def on_fake_host(tmp_path: Path, script: str) -> None:
    """Run the script in dash with its paths moved under tmp_path and systemctl a stub
    that logs its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/calls\n")
    (bin_dir / "systemctl").chmod(0o755)
    for path in ("/srv/", "/etc/"):
        script = script.replace(path, f"{tmp_path}{path}")
    subprocess.run(["dash", "-c", script], check=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})


def me() -> str:
    return subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()


def test_enter_and_leave_swap_current_and_the_drop_in(tmp_path: Path) -> None:
    current = tmp_path / "srv/fpm-fleet/www/current"
    current.mkdir(parents=True)
    on_fake_host(tmp_path, peer.enter_script(SITE))
    assert current.is_symlink()
    assert str(current.readlink()) == f"{tmp_path}/srv/capistrano/www/current"
    dropin = tmp_path / "etc/systemd/system/fpm-fleet-www@.service.d/x.conf"
    assert dropin.read_text() == "[Service]\nBindReadOnlyPaths=\n"
    on_fake_host(tmp_path, peer.leave_script(SITE, me(), "755"))
    assert current.is_dir() and not current.is_symlink() and not dropin.exists()
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith("stop ") and calls[-1].startswith("start ")
    assert calls.count("daemon-reload") == 2


def test_leave_is_idempotent(tmp_path: Path) -> None:
    (tmp_path / "srv/fpm-fleet/www/current").mkdir(parents=True)
    on_fake_host(tmp_path, peer.leave_script(SITE, me(), "755"))
    assert (tmp_path / "srv/fpm-fleet/www/current").is_dir()


def test_capsite_follows_the_inventory(tmp_path: Path) -> None:
    from fpm_fleet.core import inventory
    path = tmp_path / "hosts.toml"
    path.write_text('[[hosts]]\nname = "h1"\naddress = "198.18.0.11"\n\n'
                    '[pools.www]\nreplicas = 2\nsource = "/tmp/src"\n')
    fleet: Fleet = inventory.load(path)
    site = peer.CapSite.of(fleet.hosts[0], fleet.pools[0])
    # every slot the pool has (a surge pool's standby set too: Apache routes only to the
    # members in rotation, and Capistrano's USR2 reaches every master)
    assert site.units == tuple(f"fpm-fleet-www@{n}.service" for n in (1, 2, 3, 4))
    assert site.started == site.units  # unless told which serve
    serving = peer.CapSite.of(fleet.hosts[0], fleet.pools[0], site.units[2:])
    # both tools run the set that served: the switch back starts only it, and stops all
    leave = peer.leave_script(serving, "deploy:deploy", "755")
    assert leave.splitlines()[-1] == ("systemctl start fpm-fleet-www@3.service "
                                      "fpm-fleet-www@4.service")
    assert "systemctl stop fpm-fleet-www@1.service" in leave
    assert site.deploy_to == PurePosixPath("/srv/capistrano/www")
    assert str(site.dropin).startswith("/etc/systemd/system/fpm-fleet-www@.service.d/")
    assert site.current.name == "current"


def window(failed: int, p99: float, new: float | None) -> Window:
    return Window("x", requests=100, failed=failed, fast_p50_ms=1.0, fast_p99_ms=p99,
                  fast_max_ms=p99 * 2, reasons={"fast: HTTP 503": failed} if failed else {},
                  slow_in_flight=4, time_to_new_s=new)


def test_peer_table_has_one_row_per_tool_with_every_round() -> None:
    runs = [peer.PeerRun("fab", 1, "peer-fab-1", 0, 5.5, window(0, 8.0, 3.2)),
            peer.PeerRun("cap", 1, "peer-cap-1", 0, 3.1, window(2, 9.0, 2.5)),
            peer.PeerRun("fab", 2, "peer-fab-2", 0, 5.0, window(0, 7.0, 3.0)),
            peer.PeerRun("cap", 2, "peer-cap-2", 1, 3.3, window(1, 9.5, None))]
    t = tables.peer(peer.Peer("h1", "3.17.2", runs), QUICK)
    fab_row, cap_row = t.rows
    assert fab_row[0] == peer.TOOLS["fab"] and fab_row[4] == "0"
    assert fab_row[11] == "5.50 / 5.00" and fab_row[12] == "3.20 / 3.00"
    assert cap_row[4] == "3" and cap_row[6] == "fast: HTTP 503 x3"
    assert cap_row[12] == "2.50 / never" and cap_row[13] == "2: exit 1"
    assert cap_row[8] == "9.5" and cap_row[9] == "19.0"


def test_cap_version_is_read_from_cap_version() -> None:
    assert peer.cap_version("Capistrano Version: 3.17.2 (Rake Version: 13.0.6)\n") == "3.17.2"
    assert peer.cap_version("") == "?"
