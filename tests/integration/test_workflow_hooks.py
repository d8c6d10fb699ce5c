"""after_activate, webhook notifications and `fab history` on a real 2-host sandbox, once
with rolling and once with surge pools: the hooks run on the hosts as the deploy user, the
webhooks are receivers on this machine (where fab runs), the history is what the hosts
recorded."""

from __future__ import annotations

import getpass
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.receiver import Receiver, refused_url

from .conftest import Sandbox, bring_up, fab, get, ok, tear_down

SECRET_PATH = "/services/T0/B0/s3cr3t-hook-token"
SECRET_PASSWORD = "hunter2-webhook-pw"
WHO = f"{getpass.getuser()}@{socket.gethostname()}"
RECORD = 'echo "$(id -un) $(pwd -P)" >> "$(pwd -P)/../../shared/after.log"'


@pytest.fixture(scope="module", params=["rolling", "surge"])
def box(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A fresh 2-host fleet per strategy: after_activate waits for the pool's own roll."""
    fleet = bring_up(2, request.param)
    yield fleet
    assert tear_down() == []


@pytest.fixture(scope="module")
def webhook() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def receiver(webhook: Receiver) -> Receiver:
    """The module's receiver, with only this test's posts."""
    webhook.posts.clear()
    return webhook


def inventory(box: Sandbox, directory: Path, hooks: list[str], webhooks: list[str]) -> Path:
    """The sandbox's inventory with the pool's after_activate and a [notify] table."""
    text = box.path.read_text().replace(
        "[pools.www]\n", f"[pools.www]\nafter_activate = {json.dumps(hooks)}\n")
    text += f"\n[notify]\nwebhooks = {json.dumps(webhooks)}\ntimeout = 2\nretries = 1\n"
    path = directory / "hosts.toml"
    path.write_text(text)
    return path


def after_log(box: Sandbox, host: int) -> list[str]:
    path = box.pool_dir(host) / "shared" / "after.log"
    return path.read_text().splitlines() if path.exists() else []


def serving(box: Sandbox, release: str) -> bool:
    """Every replica in rotation (a surge pool's standby set aside) is on `release`, and
    each host has its pool's two."""
    rows = [r for r in box.status() if r["role"] == "serving"]
    return len(rows) == 4 and all(r["release"] == release and r["ok"] for r in rows)


def test_after_activate_runs_as_deploy_in_the_release_and_a_dead_webhook_changes_nothing(
        box: Sandbox, receiver: Receiver, tmp_path: Path) -> None:
    dead = refused_url(SECRET_PATH).replace("http://", f"http://ops:{SECRET_PASSWORD}@")
    path = inventory(box, tmp_path, [RECORD], [receiver.url(SECRET_PATH), dead])
    box.build("v2")
    proc = ok(fab("deploy", "--release", "v2", "--plain", inventory_path=path))
    release_dir = box.remote_pool_dir(0) / "releases" / "v2"
    for host in (0, 1):
        assert after_log(box, host)[-1] == f"deploy {release_dir}"
    assert serving(box, "v2")
    assert "after_activate" in proc.stdout and "ok (1)" in proc.stdout
    # the receiver heard the whole deploy; the dead webhook is named only by its origin
    assert receiver.events() == ["deploy.started", "deploy.host", "deploy.host",
                                 "deploy.finished"]
    assert {p for p, _ in receiver.posts} == {SECRET_PATH}
    done = receiver.posts[-1][1]
    assert (done["release"], done["previous"], done["result"], done["who"]) == \
        ("v2", "v1", "ok", WHO)
    assert [h["result"] for h in done["hosts"]] == ["done", "done"]
    assert "4 of 4 delivered" in proc.stderr
    assert "0 of 4 delivered" in proc.stderr and "Connection refused" in proc.stderr
    log = next(line for line in proc.stderr.splitlines() if line.startswith("log: "))[5:]
    for text in (proc.stdout, proc.stderr, Path(log).read_text()):
        assert SECRET_PASSWORD not in text and "s3cr3t-hook-token" not in text


def test_failing_after_activate_is_reported_and_the_release_keeps_serving(
        box: Sandbox, receiver: Receiver, tmp_path: Path) -> None:
    path = inventory(box, tmp_path, ["true", "echo queue restart refused >&2; exit 3"],
                     [receiver.url()])
    box.build("v3")
    proc = fab("deploy", "--release", "v3", "--plain", inventory_path=path)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.count("FAILED") >= 2  # both hosts' after_activate column
    assert "after_activate `echo queue restart refused >&2; exit 3` failed (exit 3): " \
        "queue restart refused; v3 still serves" in proc.stderr
    assert "after_activate failed on h1/www, h2/www; the release serves (it is not undone)" \
        in proc.stderr
    assert serving(box, "v3")
    assert all(get(a, "/release.txt")[1].strip() == "v3" for a in box.addresses())
    hosts = [body for _, body in receiver.posts if body["event"] == "deploy.host"]
    assert [h["pools"][0]["after_activate"].startswith("FAILED") for h in hosts] == \
        [True, True]


def test_rollback_runs_after_activate_for_the_release_it_goes_back_to(
        box: Sandbox, receiver: Receiver, tmp_path: Path) -> None:
    path = inventory(box, tmp_path, [RECORD], [receiver.url()])
    proc = ok(fab("rollback", "--plain", inventory_path=path))
    assert "v3 -> v2" in proc.stdout
    for host in (0, 1):
        assert after_log(box, host)[-1] == f"deploy {box.remote_pool_dir(0)}/releases/v2"
    assert receiver.events()[-1] == "rollback.finished"
    assert receiver.posts[-1][1]["release"] == "v2"


def test_an_automatic_revert_runs_after_activate_for_the_release_serving_again(
        box: Sandbox, receiver: Receiver, tmp_path: Path) -> None:
    path = inventory(box, tmp_path, [RECORD], [receiver.url()])
    box.build("v4", unhealthy=True)
    proc = fab("deploy", "--release", "v4", "--plain", inventory_path=path)
    assert proc.returncode == 5 and "reverted" in proc.stdout
    assert after_log(box, 0)[-1] == f"deploy {box.remote_pool_dir(0)}/releases/v2"
    assert serving(box, "v2")
    host = next(b for _, b in receiver.posts if b["event"] == "deploy.host")
    assert host["result"] == "reverted"
    assert receiver.posts[-1][1]["result"] == "failed"


def test_history_lists_every_activation_with_who_and_result(box: Sandbox) -> None:
    entries = json.loads(ok(fab("history", "--json", "--host", "h1")).stdout)
    got = [(e["kind"], e["from"], e["to"], e["result"]) for e in entries]
    assert got[:5] == [("revert", "v4", "v2", "ok"), ("deploy", "v2", "v4", "reverted"),
                       ("rollback", "v3", "v2", "ok"), ("deploy", "v2", "v3", "ok"),
                       ("deploy", "v1", "v2", "ok")]
    assert all(e["who"] == WHO and e["host"] == "h1" and e["pool"] == "www" for e in entries)
    assert "rollback" in entries[2]["command"] and "--release v4" in entries[1]["command"]
    table = ok(fab("history", "--limit", "2")).stdout
    # the newest two per host: h1's revert and reverted deploy, h2's rollback and deploy
    assert [table.count(m) for m in ("v4 -> v2", "v2 -> v4", "v3 -> v2", "v2 -> v3")] == \
        [1, 1, 1, 1]


def test_history_skips_a_malformed_entry_and_says_so(box: Sandbox) -> None:
    history = box.pool_dir(0) / "state" / "history"
    with history.open("a") as fh:
        fh.write("garbage without tabs\n2026-13-99\tv9\n")
    proc = ok(fab("history", "--json", "--host", "h1"))
    assert json.loads(proc.stdout)[0]["kind"] == "revert"
    assert "h1/www: 2 malformed history line(s) skipped" in proc.stderr
    box.build("v5")
    ok(fab("deploy", "--release", "v5", "--plain", "--host", "h1"))
    entries = json.loads(ok(fab("history", "--json", "--host", "h1")).stdout)
    assert (entries[0]["from"], entries[0]["to"]) == ("v2", "v5")


def test_a_slow_webhook_adds_at_most_its_timeout_to_a_deploy(box: Sandbox, tmp_path: Path
                                                             ) -> None:
    box.build("v6")
    box.build("v7")
    plain = inventory(box, tmp_path, [], [])
    began = time.monotonic()
    ok(fab("deploy", "--release", "v6", "--plain", "--host", "h1", inventory_path=plain))
    alone = time.monotonic() - began
    with Receiver(delay=10) as slow:
        (tmp_path / "slow").mkdir()
        path = inventory(box, tmp_path / "slow", [], [slow.url()])
        path.write_text(path.read_text().replace("timeout = 2", "timeout = 1"))
        began = time.monotonic()
        proc = ok(fab("deploy", "--release", "v7", "--plain", "--host", "h1",
                      inventory_path=path))
        slowed = time.monotonic() - began
    assert "0 of 3 delivered" in proc.stderr and "no answer within 1s" in proc.stderr
    print(f"deploy to h1: {alone:.2f}s alone, {slowed:.2f}s with a webhook that never answers")
    assert slowed - alone < 2.5  # the final wait is bounded by the timeout (1 s)
