"""nginx as a host's web server, on a real mixed 2-host sandbox: h1 runs Apache, h2 Debian's
nginx (surge pools). One command deploys both under load; and the traps of driving nginx,
which has no runtime API (every member change is a rewrite, `nginx -t` and a graceful
reload), each with its test: reloads while an earlier reload's old workers still drain,
keep-alive connections to old workers, an old worker answering the members after a new one
did, a reload nginx refuses, and nginx reloaded or restarted by someone else in the middle
of a rollout.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from .conftest import (
    Background,
    Sandbox,
    assert_no_failures,
    bring_up,
    fab,
    get,
    load,
    ok,
    tear_down,
)

NGINX_HOST = 1  # h2
MEMBERS = ("curl", "-sS", "--unix-socket", "/run/fpm-fleet-nginx.sock", "-H", "Host: www",
           "http://fpm-fleet/members")


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    box = bring_up(2, "surge", web="mixed")
    yield box
    assert tear_down() == []


def members(box: Sandbox) -> str:
    return box.run(NGINX_HOST, *MEMBERS).stdout.strip()


def all_on(box: Sandbox, release: str) -> bool:
    rows = [r for r in box.status() if r["role"] == "serving"]
    return len(rows) == 4 and all(r["release"] == release and r["ok"] for r in rows)


@contextmanager
def old_generations(box: Sandbox) -> Iterator[list[int]]:
    """While the block runs, sample h2's nginx workers that are shutting down (old workers
    of a reload, finishing requests); yields a list that ends up holding, per sample, how
    many reload generations were draining at once (workers of one generation start
    together: their start times, in clock ticks, are the same)."""
    found: list[int] = []
    stop = threading.Event()
    script = ("for p in $(pgrep -f 'nginx: worker process is shutting down'); do "
              "cut -d' ' -f22 /proc/$p/stat 2>/dev/null; done")

    def sample() -> None:
        while not stop.is_set():
            ticks = box.run(NGINX_HOST, "sh", "-c", script).stdout.split()
            found.append(len({int(t) // 5 for t in ticks}))
            time.sleep(0.02)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        stop.set()
        thread.join(timeout=10)


def test_setup_check_status_and_list_name_each_hosts_web_server(box: Sandbox) -> None:
    assert "nothing changed" in ok(fab("setup")).stdout
    ok(fab("check"))
    webs = {(r["host"], r["web"]) for r in box.status()}
    assert webs == {("h1", "apache"), ("h2", "nginx")}
    listed = ok(fab("list")).stdout
    assert "upstream fpm_fleet_www" in listed and "balancer://www" in listed
    assert box.run(NGINX_HOST, "systemctl", "is-active", "apache2").stdout.strip() != "active"
    assert box.run(0, "systemctl", "is-active", "nginx").stdout.strip() != "active"
    assert members(box) == "pool=www 1=up 2=up 3=disable 4=disable"


def test_a_mixed_fleet_deploys_under_load_in_one_command(box: Sandbox) -> None:
    """Zero failed requests, no answer mixing releases, every serving replica on v2 on both
    hosts; on nginx the surge's reloads come while slow requests keep an earlier reload's
    old workers draining (the first trap)."""
    box.build("v2")
    with old_generations(box) as draining, load(box) as stats:
        proc = ok(fab("deploy", "--release", "v2", "--plain"))
        box.settled()  # the hosts retire the old sets by themselves
    assert_no_failures(stats)
    assert all_on(box, "v2")
    assert "v1 -> v2" in proc.stdout
    assert max(draining) >= 2, f"never saw two reloads' old workers at once: {draining}"
    assert members(box) == "pool=www 1=disable 2=disable 3=up 4=up"
    for address in box.addresses():
        assert get(address, "/release.txt")[1].strip() == "v2"


def test_rollback_and_an_automatic_revert_on_nginx(box: Sandbox) -> None:
    with load(box) as stats:
        ok(fab("rollback", "--plain"))
        box.build("v3", unhealthy=True)
        failed = fab("deploy", "--release", "v3", "--plain")
        box.settled()
    assert failed.returncode != 0 and "reverted" in failed.stdout
    assert_no_failures(stats)
    assert all_on(box, "v1")


@dataclass
class KeptClient:
    """One HTTP/1.1 connection kept open and reused, as a browser or a proxy keeps it."""

    address: str
    answers: int = 0
    closed_by_server: int = 0  # the kept connection was closed under a request: retried
    failures: list[str] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        conn = http.client.HTTPConnection(self.address, 80, timeout=10)
        while not stop.is_set():
            try:
                self._once(conn)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # HTTP allows the retry of an idempotent request whose kept connection the
                # server closed; browsers and curl do it: a fresh connection
                self.closed_by_server += 1
                conn.close()
                conn = http.client.HTTPConnection(self.address, 80, timeout=10)
                try:
                    self._once(conn)
                except Exception as exc:
                    self.failures.append(repr(exc))
            time.sleep(0.01)
        conn.close()

    def _once(self, conn: http.client.HTTPConnection) -> None:
        conn.request("GET", "/ping.php", headers={"Host": "www"})
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200 or not body.startswith("pong"):
            self.failures.append(f"HTTP {resp.status}: {body[:60]}")
        self.answers += 1


def test_keep_alive_connections_to_old_workers(box: Sandbox) -> None:
    """An old worker closes the connections it keeps once the request in hand is answered
    (and idle ones at once): it never serves a kept connection's next request with the
    configuration it started with (a replica drained, then stopped). The client's retry
    on a fresh connection lands on a new worker."""
    clients = [KeptClient(box.addresses()[NGINX_HOST]) for _ in range(3)]
    stop = threading.Event()
    threads = [threading.Thread(target=c.run, args=(stop,), daemon=True) for c in clients]
    with load(box, hosts=["h2"]) as stats:
        for t in threads:
            t.start()
        time.sleep(0.5)
        ok(fab("restart", "--host", "h2", "--plain"))
        box.settled()
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert_no_failures(stats)
    assert all(c.answers > 20 and not c.failures for c in clients), \
        [(c.answers, c.failures) for c in clients]
    assert sum(c.closed_by_server for c in clients) >= 1, "no kept connection was closed"


def test_a_reload_nginx_refuses_changes_nothing_and_says_why(box: Sandbox) -> None:
    before = members(box)
    broken = box.on_host("/etc/nginx/conf.d/zz-operator.conf", NGINX_HOST)
    broken.write_text("upstream half_written {\n")
    try:
        with load(box, hosts=["h2"]) as stats:
            refused = fab("restart", "--host", "h2", "--plain")
        assert refused.returncode == 5, refused.stdout + refused.stderr
        assert "fails nginx -t" in refused.stdout + refused.stderr
        assert "nothing was changed" in refused.stdout + refused.stderr
        assert_no_failures(stats)
        assert members(box) == before
        assert all(r["ok"] for r in box.status("--host", "h2"))
    finally:
        broken.unlink()
    ok(fab("restart", "--host", "h2", "--plain"))
    box.settled()
    assert members(box) != before and all(r["ok"] for r in box.status("--host", "h2"))


CHANGES_READ_BACK = 100  # changes of a member, each followed by 5 reads of the members

# as root on the host: toggle member N between up and drain through the helper (the other
# members as STATES gives them), read the members 5 times after each change, print the reads
# that did not answer what the helper had just confirmed
TOGGLE_AND_READ = """
stale=0
for i in $(seq 1 "$CHANGES"); do
    if [ $((i % 2)) = 1 ]; then s=drain; else s=up; fi
    want=$(printf '%s\\n' "$STATES" | sed "s/^$N .*/$N $s/" |
        /usr/local/lib/fpm-fleet/nginx-members www) || exit 1
    for _ in 1 2 3 4 5; do
        got=$(curl -sS --max-time 2 --unix-socket /run/fpm-fleet-nginx.sock \\
            -H 'Host: www' http://fpm-fleet/members)
        [ "$got" = "$want" ] || { stale=$((stale + 1)); echo "after $want: $got"; }
    done
done
echo "stale $stale"
"""


def test_every_read_after_a_change_answers_the_new_states(box: Sandbox) -> None:
    """Right after a reload an old worker may still accept and answer the old states (the
    master tells it to quit only after starting the new ones): a rollout reading then would
    write other members back. Under load (old workers busy, slower to quit) the helper
    returns only once none of them accepts. Before it waited, this test saw 10 stale reads
    of 500."""
    before = members(box)
    states = [word.split("=") for word in before.split()[1:]]
    member = next(n for n, state in states if state == "up")
    lines = "\n".join(f"{n} {state}" for n, state in states)
    with load(box, hosts=["h2"]) as stats:
        proc = box.run(NGINX_HOST, "env", f"CHANGES={CHANGES_READ_BACK}", f"STATES={lines}",
                       f"N={member}", "sh", "-c", TOGGLE_AND_READ, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("stale 0"), proc.stdout[-2000:]
    assert_no_failures(stats)
    assert members(box) == before  # an even number of changes: back where it was


def test_nginx_reloaded_by_someone_else_mid_rollout(box: Sandbox) -> None:
    """A reload by an operator re-reads the upstream files, which hold every change the
    rollout made: nothing goes back into rotation, no request fails. The reloads come after
    the flip, while the host retires the old set (its requests finish, then the helper
    disables its members: a reload of its own)."""
    with load(box, hosts=["h2"]) as stats:
        run = Background("restart", "--host", "h2", "--plain")
        run.wait_for("flip")
        for _ in range(3):
            assert box.run(NGINX_HOST, "systemctl", "reload", "nginx").returncode == 0
            time.sleep(0.3)
        code, out, err = run.finish()
        box.settled()
    assert code == 0, out + err
    assert "done" in box.on_host("/srv/fpm-fleet/www/state/retire.log", NGINX_HOST).read_text()
    assert_no_failures(stats)
    assert all(r["ok"] for r in box.status("--host", "h2"))


def test_nginx_restarted_by_someone_else_mid_rollout(box: Sandbox) -> None:
    """A restart drops what nginx holds (its own doing, not the rollout's): the rollout
    still ends with the serving set in rotation and the running states those of the
    upstream file, and no answer mixes releases."""
    with load(box, hosts=["h2"]) as stats:
        run = Background("restart", "--host", "h2", "--plain")
        run.wait_for("health")
        assert box.run(NGINX_HOST, "systemctl", "restart", "nginx").returncode == 0
        code, out, err = run.finish()
        assert code == 0, out + err
        box.settled()
    assert not any("mixed" in reason for st in stats for reason in st.reasons)
    rows = box.status("--host", "h2")
    assert all(r["ok"] for r in rows), json.dumps(rows)
    conf = box.on_host("/etc/nginx/fpm-fleet/www.conf", NGINX_HOST).read_text()
    assert members(box) in conf


def test_only_the_deploy_user_changes_members_and_only_through_its_sudo_lines(
        box: Sandbox) -> None:
    before = members(box)
    as_php = box.run(NGINX_HOST, "runuser", "-u", "www-data", "--", "sh", "-c",
                     "printf '1 drain\\n2 drain\\n3 drain\\n4 drain\\n' | "
                     "sudo -n /usr/local/lib/fpm-fleet/nginx-members www; "
                     "printf '1 drain\\n2 drain\\n3 drain\\n4 drain\\n' | "
                     "/usr/local/lib/fpm-fleet/nginx-members www")
    assert as_php.returncode != 0
    other_pool = box.run(NGINX_HOST, "runuser", "-u", "deploy", "--", "sudo", "-n",
                         "/usr/local/lib/fpm-fleet/nginx-members", "other")
    assert other_pool.returncode != 0
    assert members(box) == before
    for path in ("/.env", "/.git/config", "/lib/part1.inc"):
        status, body = get(box.addresses()[NGINX_HOST], path)
        assert status in (403, 404) and "<?php" not in body, (path, status)
