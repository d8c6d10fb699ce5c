"""fpm_fleet.status: per-replica rows and the per-pool drift warnings."""

from __future__ import annotations

from fakes import FakeRunner, sections_output

from fpm_fleet import status
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import origin
from fpm_fleet.status import ReplicaStatus


def row(n: int | None, release: str | None, current: str | None = "v2", host: str = "web1",
        pool: str = "www") -> ReplicaStatus:
    return ReplicaStatus(host, pool, n, release=release, current_release=current)


def test_no_drift_when_every_replica_pins_current_release():
    assert status.drift([row(1, "v2"), row(2, "v2"), row(3, "v2")]) == []


def test_replicas_pinning_different_releases_is_drift_naming_each_replica():
    drifts = status.drift([row(1, "v2"), row(2, "v1")])
    assert drifts[0] == status.Drift("web1", "www",
                                     "replicas pin different releases: www-1=v2, www-2=v1")


def test_a_replica_pinning_something_other_than_current_release_is_drift():
    drifts = status.drift([row(1, "v1", current="v2"), row(2, "v1", current="v2")])
    assert drifts == [status.Drift("web1", "www", "current.release is v2 but www-1 pins v1, "
                                   "www-2 pins v1 (restart to apply)")]


def test_mixed_releases_report_both_the_split_and_the_stale_replicas():
    messages = [d.message for d in status.drift([row(1, "v2"), row(2, "v1")])]
    assert len(messages) == 2
    assert "www-2 pins v1" in messages[1]
    assert "www-1" not in messages[1]


def test_stopped_replicas_do_not_count_as_drift():
    assert status.drift([row(1, "v2"), row(2, None)]) == []


def test_drift_is_judged_per_host_and_pool():
    rows = [row(1, "v1", current="v1", host="web1"), row(2, "v1", current="v1", host="web1"),
            row(1, "v2", host="web2"), row(2, "v2", host="web2"),
            row(1, "a1", current="a1", pool="api"), row(2, "a0", current="a1", pool="api")]
    drifts = status.drift(rows)
    assert {(d.host, d.pool) for d in drifts} == {("web1", "api")}


def test_host_wide_rows_without_replica_are_ignored():
    assert status.drift([row(None, "v1"), row(1, "v2")]) == []


def test_unreachable_host_gives_one_failing_row_per_pool(inventory_data, build_fleet):
    inventory_data["pools"]["api"] = {"replicas": 2}
    fleet = build_fleet(inventory_data)
    rows = status.unreachable(fleet.hosts[1], fleet.pools, "web2: unreachable: timed out")
    assert [(r.host, r.pool, r.replica, r.lb_status, r.ok) for r in rows] == [
        ("web2", "www", None, "unreachable", False), ("web2", "api", None, "unreachable", False)]
    assert rows[0].problems == ["web2: unreachable: timed out"]


# --- pool_status over a fake host --------------------------------------------------------------

def xml(*statuses: str, busy: int = 0) -> str:
    workers = "".join(
        f"<httpd:worker><httpd:name>unix:/s/www-{n}.sock|fcgi://www-{n}</httpd:name>"
        f"<httpd:status>{s}</httpd:status><httpd:busy>{busy}</httpd:busy></httpd:worker>"
        for n, s in enumerate(statuses, 1))
    return ("<httpd:manager xmlns:httpd='http://httpd.apache.org'><httpd:balancers>"
            "<httpd:balancer><httpd:name>balancer://www</httpd:name><httpd:nonce>n</httpd:nonce>"
            f"<httpd:workers>{workers}</httpd:workers></httpd:balancer></httpd:balancers>"
            "</httpd:manager>")


def fake_host(host, probe: str, page: str, ping: str = "pong", origins: str = "",
              conns: str = "") -> FakeRunner:
    """Answers current.release, the probe (with `conns`, the connections on each replica's
    socket; alone when status asks about some replicas only), balancer-manager, ping and
    the recorded origins; nothing else."""
    probed = sections_output([("0", probe, 0), ("1", conns, 0)])
    return FakeRunner(host, ("read www current.release", "releases/v2\n"),
                      ("probe www replicas and their connections", probed),
                      ("probe www replicas", probe),
                      ("read balancer-manager", page),
                      ("ping ", f"Content-type: text/plain\r\n\r\n{ping}"),
                      ("read release origins", origins), default=None)


def pool_status(runner: FakeRunner, pool, numbers: list[int]) -> list[ReplicaStatus]:
    return status.pool_status(HostPool(runner, runner.host, pool), numbers)


def probe_line(n: int, release: str, service: str = "active", strays: int = 0) -> str:
    title = f"php-fpm: master process (/srv/fpm-fleet/www/conf/www-{n}.conf)"
    return (f"{n}\t{100 + n}\tS\t60\t{title}\t/srv/fpm-fleet/www/releases/{release}"
            f"\t{service}\t{strays}\n")


def stopped_line(n: int, service: str = "inactive", strays: int = 0) -> str:
    return f"{n}\t-\t-\t-\t-\t-\t{service}\t{strays}\n"


def test_pool_status_of_a_healthy_pool_is_ok_and_consistent(web):
    host, pool = web
    ex = fake_host(host, probe_line(1, "v2") + probe_line(2, "v2"), xml("Init Ok", "Init Ok"),
                   conns="1 1\n2 2\n")
    rows = pool_status(ex, pool, [1, 2])
    assert [(r.replica, r.ok, r.release, r.current_release, r.pid, r.lb_status, r.busy,
             r.service, r.strays)
            for r in rows] == [(1, True, "v2", "v2", 101, "Init Ok", 1, "active", 0),
                               (2, True, "v2", "v2", 102, "Init Ok", 2, "active", 0)]
    assert status.drift(rows) == []
    assert [r.commit for r in rows] == [None, None]


def test_pool_status_shows_the_commit_of_the_release_each_replica_pins(web):
    host, pool = web
    origins = (f"{origin.MARK} v1\ncommit={'1' * 40}\nref=main\n"
               f"{origin.MARK} v2\ncommit={'2' * 40}\nref=v2-tag\n")
    ex = fake_host(host, probe_line(1, "v2") + probe_line(2, "v1"), xml("Init Ok", "Init Ok"),
                   origins=origins)
    assert [r.commit for r in pool_status(ex, pool, [1, 2])] == ["2" * 40, "1" * 40]


def test_pool_status_flags_a_drained_member_and_a_stopped_replica(web):
    host, pool = web
    ex = fake_host(host, probe_line(1, "v1") + stopped_line(2), xml("Init Drn Ok", "Init Ok"))
    one, two = pool_status(ex, pool, [1, 2])
    assert one.problems == ["not in rotation (Init Drn Ok)"]
    assert two.problems == ["not running", "service inactive"]
    assert two.release is None and two.pid is None
    assert [d.message for d in status.drift([one, two])] == [
        "current.release is v2 but www-1 pins v1 (restart to apply)"]


def test_pool_status_reports_a_replica_that_does_not_answer_ping(web):
    host, pool = web
    ex = fake_host(host, probe_line(1, "v2"), xml("Init Ok", "Init Ok"), ping="File not found.")
    (one,) = pool_status(ex, pool, [1])
    assert one.problems == ["no ping"]
    assert not one.ok


def test_pool_status_flags_a_service_systemd_does_not_report_active(web):
    # a master that runs outside its service (started by hand) is still a problem
    host, pool = web
    ex = fake_host(host, probe_line(1, "v2", service="failed"), xml("Init Ok"))
    (one,) = pool_status(ex, pool, [1])
    assert (one.service, one.pid) == ("failed", 101)
    assert one.problems == ["service failed"]
    assert not one.ok


def test_pool_status_flags_workers_left_running_by_a_dead_master(web):
    host, pool = web
    ex = fake_host(host, stopped_line(1, service="activating", strays=2), xml("Init Ok"))
    (one,) = pool_status(ex, pool, [1])
    assert one.strays == 2
    assert one.problems == ["not running", "service activating",
                            "2 workers run outside any live master"]


def test_pool_status_with_balancer_manager_unreadable_keeps_the_error(web):
    host, pool = web
    ex = fake_host(host, probe_line(1, "v2"), "<html>403 Forbidden")
    (one,) = pool_status(ex, pool, [1])
    assert one.lb_status == "unreachable"
    assert any("did not answer XML" in p for p in one.problems)


def test_pool_status_flags_a_master_that_pins_no_release(web):
    # current/ is not its bind mount (e.g. replaced by a symlink): it serves whatever the
    # symlink names, not one release
    host, pool = web
    title = "php-fpm: master process (/srv/fpm-fleet/www/conf/www-1.conf)"
    ex = fake_host(host, f"1\t101\tS\t60\t{title}\t-\tactive\t0\n", xml("Init Ok"))
    (one,) = pool_status(ex, pool, [1])
    assert one.problems == ["not pinned to a release (current/ is not its bind mount)"]


def test_on_nginx_busy_is_the_connections_open_on_each_replicas_socket(inventory_data,
                                                                       build_fleet):
    """nginx counts no request per member: the probe's round trip brings each replica's open
    connections along (one command), and they are its busy figure."""
    inventory_data["defaults"]["web"] = "nginx"
    fleet = build_fleet(inventory_data)
    host, pool = fleet.hosts[0], fleet.pool("www")
    both = sections_output([("0", probe_line(1, "v2") + probe_line(2, "v2"), 0),
                            ("1", "1 3\n2 0\n", 0)])
    ex = FakeRunner(host, ("read www current.release", "releases/v2\n"),
                    ("probe www replicas and their connections", both),
                    ("read nginx members", "pool=www 1=up 2=drain\n"),
                    ("ping ", "Content-type: text/plain\r\n\r\npong"),
                    ("read release origins", ""), default=None)
    rows = pool_status(ex, pool, [1, 2])
    assert [(r.web, r.replica, r.lb_status, r.busy) for r in rows] == [
        ("nginx", 1, "Ok", 3), ("nginx", 2, "Drn Ok", 0)]
    assert rows[0].ok and rows[1].problems == ["not in rotation (Drn Ok)"]
    assert sum("probe" in what for what in ex.whats) == 1


def test_on_apache_busy_is_the_connections_too_not_balancer_managers_drifting_count(web):
    """Apache's Busy is updated without atomics and drifts either way under load (it read 0
    with three requests in flight): the connections on the replica's socket are counted."""
    host, pool = web
    ex = fake_host(host, probe_line(1, "v2") + probe_line(2, "v2"),
                   xml("Init Ok", "Init Ok", busy=0), conns="1 3\n2 0\n")
    assert [r.busy for r in pool_status(ex, pool, [1, 2])] == [3, 0]
    assert sum("probe" in what for what in ex.whats) == 1
