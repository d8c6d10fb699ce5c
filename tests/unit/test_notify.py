"""Webhook notifications: the payloads (JSON and Slack text), the URL never shown, and real
deliveries to receivers on 127.0.0.1: one that answers, one that is down, one too slow, one
that fails once then answers; none of them holds up the run beyond its bound."""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest
from receiver import Receiver, refused_url

from fpm_fleet import notify, report
from fpm_fleet.core.errors import ConfigError, RolloutError
from fpm_fleet.core.inventory import Notify
from fpm_fleet.core.redact import url_origin
from fpm_fleet.remote.group import GroupResult, HostOutcome
from fpm_fleet.rollout.deploy import PoolFailed, PoolOutcome
from fpm_fleet.rollout.hooks import HookOutcome


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(notify, "BACKOFF", 0.05)


def fast(*urls: str, timeout: float = 1.0, retries: int = 2, fmt: str = "json") -> Notify:
    return Notify(webhooks=urls, format=fmt, timeout=timeout, retries=retries)


def results() -> GroupResult[list[PoolOutcome]]:
    reverted = PoolOutcome("h2", "www", "v1", "v1", True, reverted=True)
    failed = PoolFailed(RolloutError("h2: www-1 failed its health gate; reverted"), (reverted,))
    return GroupResult((
        HostOutcome("h1", [PoolOutcome("h1", "www", "v1", "v2", True,
                                       after_activate=HookOutcome("v2", 1))],
                    reached=True, seconds=3.21, canary=True),
        HostOutcome("h2", error=failed, reached=True, seconds=4.0),
        HostOutcome("h3")))


# --- payloads (pure) -------------------------------------------------------------------------

def test_finished_says_release_previous_duration_hosts_who_and_result():
    msg = notify.finished("deploy", "v2", results(), 12.345, "ops@ci")
    fields = json.loads(notify.body(msg, "json"))
    assert {k: fields[k] for k in ("event", "release", "previous", "duration", "who",
                                   "result")} == {
        "event": "deploy.finished", "release": "v2", "previous": "v1", "duration": 12.3,
        "who": "ops@ci", "result": "failed"}
    assert [(h["host"], h["result"]) for h in fields["hosts"]] == [
        ("h1", "done"), ("h2", "reverted"), ("h3", "untouched")]
    assert fields["hosts"][0]["pools"] == [{"pool": "www", "before": "v1", "after": "v2",
                                            "reverted": False, "after_activate": "ok (1)"}]


def test_the_slack_payload_is_one_text_line():
    msg = notify.finished("deploy", "v2", results(), 12.3, "ops@ci")
    assert json.loads(notify.body(msg, "slack")) == {
        "text": "fpm-fleet: deploy of v2 finished: failed on 3 host(s) in 12.3s "
                "(previous v1), by ops@ci"}


def test_host_messages_say_done_failed_or_reverted_with_the_after_activate_failure():
    failing = PoolOutcome("h1", "www", "v1", "v2", True,
                          after_activate=HookOutcome("v2", 0, "`x` failed (exit 1): no"))
    msg = notify.host_done("deploy", "h1", [failing], None, 2.0)
    assert msg.fields["result"] == "done"
    assert msg.text == ("fpm-fleet: deploy on h1 done in 2.0s: www v1 -> v2; www: "
                        "after_activate `x` failed (exit 1): no")
    assert notify.host_done("rollback", "h2", [], RolloutError("lock held"), 1.0).fields[
        "result"] == "failed"
    assert notify.host_done("deploy", "h2", [PoolOutcome("h2", "www", reverted=True)],
                            RolloutError("x"), 1.0).fields["event"] == "deploy.host"


def test_started_names_the_hosts_and_who():
    msg = notify.started("rollback", None, ["h1", "h2"], "ops@ci", "hosts.toml")
    assert msg.fields["event"] == "rollback.started" and msg.fields["hosts"] == ["h1", "h2"]
    assert msg.text == "fpm-fleet: rollback started on h1, h2 by ops@ci"


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.slack.com/services/T0/B0/s3cr3t", "https://hooks.slack.com/***"),
    ("http://ops:hunter2@127.0.0.1:8080/hook?token=abc", "http://127.0.0.1:8080/***"),
    ("https://chat.example.com", "https://chat.example.com"),
    ("https://chat.example.com/", "https://chat.example.com"),
    ("https://chat.example.com?token=abc", "https://chat.example.com/***"),
])
def test_a_webhook_is_shown_by_its_origin_only(url, shown):
    assert url_origin(url) == shown


# --- deliveries to real receivers ----------------------------------------------------------------

def test_every_message_reaches_a_working_webhook_in_order():
    with Receiver() as r:
        notes = notify.Notifier(fast(r.url("/services/x")), "deploy", "v2")
        notes.start([], "hosts.toml")
        notes.finish(results())
        (delivery,) = notes.close(wait=5)
    assert r.events() == ["deploy.started", "deploy.finished"]
    assert delivery == notify.Delivery(f"{url_origin(r.url())}", 2, 0, 0, "")
    assert r.posts[0][0] == "/services/x"


def test_a_user_and_password_in_the_url_are_sent_as_basic_auth():
    with Receiver() as r:
        url = r.url("/hook?token=x").replace("http://", "http://ops:p%40ss@")
        notes = notify.Notifier(fast(url), "deploy", "v2")
        notes.start([], "hosts.toml")
        (delivery,) = notes.close(wait=5)
    assert delivery.delivered == 1 and r.posts[0][0] == "/hook?token=x"
    assert r.auth == ["Basic " + base64.b64encode(b"ops:p@ss").decode()]


def test_a_webhook_answering_500_once_gets_the_message_on_the_retry():
    with Receiver(statuses=(500,)) as r:
        notes = notify.Notifier(fast(r.url()), "deploy", "v2")
        notes.start([], "hosts.toml")
        (delivery,) = notes.close(wait=5)
    assert r.attempts == 2 and r.events() == ["deploy.started"]
    assert delivery.ok and delivery.delivered == 1


def test_a_4xx_answer_is_not_retried():
    with Receiver(statuses=(404, 404, 404)) as r:
        notes = notify.Notifier(fast(r.url()), "deploy", "v2")
        notes.start([], "hosts.toml")
        (delivery,) = notes.close(wait=5)
    assert r.attempts == 1 and delivery.failed == 1 and delivery.error == "HTTP 404"


def test_a_webhook_that_is_down_is_retried_then_reported_and_never_raises(caplog):
    url = refused_url("/services/T0/s3cr3t")
    with caplog.at_level(logging.INFO, logger="fpm_fleet"):
        notes = notify.Notifier(fast(url, retries=2), "deploy", "v2")
        began = time.monotonic()
        notes.start([], "hosts.toml")
        assert time.monotonic() - began < 0.1  # sending is only queueing
        (delivery,) = notes.close(wait=5)
    assert (delivery.delivered, delivery.failed) == (0, 1)
    assert "Connection refused" in delivery.error
    assert caplog.text.count("attempt") == 3 and "s3cr3t" not in caplog.text


def test_a_slow_webhook_is_abandoned_at_the_bound_and_says_so(capsys):
    with Receiver(delay=3) as r:
        notes = notify.Notifier(fast(r.url(), timeout=0.3, retries=1), "deploy", "v2")
        notes.start([], "hosts.toml")
        notes.finish(results())
        began = time.monotonic()
        deliveries = notes.close()
        waited = time.monotonic() - began
    assert waited < 0.6  # at most `timeout` at the end of a run
    (delivery,) = deliveries
    assert delivery.delivered == 0 and delivery.failed + delivery.abandoned == 2
    report.notifications(deliveries)
    err = capsys.readouterr().err
    assert "0 of 2 delivered" in err and "the run does not depend on it" in err


def test_an_error_that_quotes_the_url_is_cut_before_it_is_shown():
    url = "https://ops:pw-s3cr3t@hooks.example.com/services/s3cr3t-path?token=s3cr3t-q"

    def send(url_: str, data: bytes, timeout: float) -> None:
        raise ValueError(f"bad thing with {url_} at /services/s3cr3t-path and token=s3cr3t-q")

    notes = notify.Notifier(fast(url, retries=0), "deploy", "v2", send=send)
    notes.start([], "hosts.toml")
    (delivery,) = notes.close(wait=2)
    assert delivery.failed == 1 and "s3cr3t" not in delivery.error
    assert delivery.error.startswith("bad thing with ***")


def test_a_notifier_without_webhooks_does_nothing():
    notes = notify.Notifier(Notify(), "deploy", "v2")
    notes.start([], "hosts.toml")
    assert notes.close() == []


def test_per_host_posts_the_host_result_and_passes_its_error_on():
    sent: list[bytes] = []
    notes = notify.Notifier(fast("http://127.0.0.1:9/x"), "deploy", "v2",
                            send=lambda url, data, timeout: sent.append(data))
    outcome = PoolOutcome("h1", "www", "v1", "v1", True, reverted=True)

    def work(runner, host, proven):
        raise PoolFailed(RolloutError("gate failed; reverted"), (outcome,))

    with pytest.raises(PoolFailed):
        notes.per_host(work)(None, type("H", (), {"name": "h1"})(), lambda: None)
    notes.close(wait=2)
    (message,) = [json.loads(s) for s in sent]
    assert (message["host"], message["result"]) == ("h1", "reverted")


# --- [notify] in the inventory -----------------------------------------------------------------

def test_notify_is_read_with_its_defaults(inventory_data, build_fleet):
    assert build_fleet(inventory_data).notify == Notify()
    inventory_data["notify"] = {"webhooks": ["https://hooks.slack.com/services/T/B/x"],
                                "format": "slack", "timeout": 2, "retries": 0}
    assert build_fleet(inventory_data).notify == Notify(
        ("https://hooks.slack.com/services/T/B/x",), "slack", 2.0, 0)


@pytest.mark.parametrize(("table", "error"), [
    ({"webhooks": ["ftp://ops:s3cr3t@x/y"]}, "notify.webhooks[0]: must be an http:// or "
                                             "https:// URL (not shown: it may hold a secret)"),
    ({"webhooks": "https://x"}, "notify.webhooks: must be a list, got str"),
    ({"webhooks": ["https://x/ok", "https://x/s3cr3t\x01"]},
     "notify.webhooks[1]: must be an http:// or https:// URL (not shown: it may hold a "
     "secret)"),
    ({"format": "xml"}, "notify.format: must be one of json, slack"),
    ({"timeout": 0}, "notify.timeout: must be > 0 and <= 30 seconds"),
    ({"retries": 9}, "notify.retries: must be 0..5"),
    ({"webhook": []}, "notify.webhook: unknown key; did you mean 'webhooks'?"),
])
def test_a_wrong_notify_table_is_refused_without_showing_the_url(inventory_data, build_fleet,
                                                                 table, error):
    inventory_data["notify"] = table
    with pytest.raises(ConfigError) as info:
        build_fleet(inventory_data)
    assert str(info.value) == f"hosts.toml: {error}" and "s3cr3t" not in str(info.value)
