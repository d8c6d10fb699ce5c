"""fpm_fleet.web.balancer: parse balancer-manager's ?xml=1 page; fpm_fleet.web.apache: change
flags with read-back."""

from __future__ import annotations

import pytest
from fakes import FakeRunner, command_has, scripted, sections_output

from fpm_fleet.core.errors import AnswerError, RemoteResult, RolloutError
from fpm_fleet.host.pool import HostPool
from fpm_fleet.remote.command import probe, together
from fpm_fleet.web import apache, balancer

NONCE = "4f1a2b3c-5d6e-7f80-9a1b-2c3d4e5f6a7b"


def worker(n: int, status: str, busy: int = 0, elected: int = 0, pool: str = "www") -> str:
    return f"""        <httpd:worker>
          <httpd:name>unix:/srv/fpm-fleet/{pool}/run/{pool}-{n}.sock|fcgi://{pool}-{n}</httpd:name>
          <httpd:scheme>fcgi</httpd:scheme>
          <httpd:hostname>{pool}-{n}</httpd:hostname>
          <httpd:loadfactor>1.00</httpd:loadfactor>
          <httpd:port>8000</httpd:port>
          <httpd:min>0</httpd:min>
          <httpd:smax>128</httpd:smax>
          <httpd:max>128</httpd:max>
          <httpd:ttl>0</httpd:ttl>
          <httpd:keepalive>Off</httpd:keepalive>
          <httpd:status>{status}</httpd:status>
          <httpd:retries>0</httpd:retries>
          <httpd:lbstatus>0</httpd:lbstatus>
          <httpd:loadfactor>1.00</httpd:loadfactor>
          <httpd:transferred>0</httpd:transferred>
          <httpd:read>0</httpd:read>
          <httpd:elected>{elected}</httpd:elected>
          <httpd:busy>{busy}</httpd:busy>
          <httpd:lbset>0</httpd:lbset>
          <httpd:retry>1</httpd:retry>
          <httpd:flushpackets>Off</httpd:flushpackets>
          <httpd:flushwait>10000</httpd:flushwait>
          <httpd:route></httpd:route>
          <httpd:redirect></httpd:redirect>
        </httpd:worker>
"""


def page(*balancers: tuple[str, list[str]]) -> str:
    body = "".join(f"""    <httpd:balancer>
      <httpd:name>balancer://{name}</httpd:name>
      <httpd:workers>
{"".join(workers)}      </httpd:workers>
      <httpd:nonce>{NONCE if name == "www" else "nonce-" + name}</httpd:nonce>
      <httpd:scolonpathdelim>Off</httpd:scolonpathdelim>
      <httpd:maxattempts>1</httpd:maxattempts>
      <httpd:lbmethod>bybusyness</httpd:lbmethod>
      <httpd:stickysession></httpd:stickysession>
      <httpd:timeout>0</httpd:timeout>
    </httpd:balancer>
""" for name, workers in balancers)
    return ("<?xml version='1.0' encoding='UTF-8' ?>\n"
            "<httpd:manager xmlns:httpd='http://httpd.apache.org'>\n"
            f"  <httpd:balancers>\n{body}  </httpd:balancers>\n</httpd:manager>\n")


def www_page(status1: str = "Init Ok ", status2: str = "Init Ok ", busy1: int = 0) -> str:
    return page(("www", [worker(1, status1, busy=busy1, elected=17), worker(2, status2)]))


# --- parsing -----------------------------------------------------------------------------------

def test_parse_xml_reads_balancers_by_short_name_with_nonce_and_members():
    bals = balancer.parse_xml(page(("www", [worker(1, "Init Ok ", busy=3, elected=17),
                                            worker(2, "Init Ok ")]),
                                   ("api", [worker(1, "Init Ok ", pool="api")])))
    assert list(bals) == ["www", "api"]
    www = bals["www"]
    assert www.name == "www"
    assert www.nonce == NONCE
    assert [m.worker for m in www.members] == [
        "unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1",
        "unix:/srv/fpm-fleet/www/run/www-2.sock|fcgi://www-2"]
    first = www.members[0]
    assert first.busy == 3
    assert first.identity == "fcgi://www-1"
    assert www.member("fcgi://www-2") is www.members[1]
    assert www.member("fcgi://www-3") is None
    assert [m.identity for m in bals["api"].members] == ["fcgi://api-1"]


def test_parse_xml_of_html_or_garbage_is_a_value_error():
    with pytest.raises(ValueError, match="did not answer XML"):
        balancer.parse_xml("<html><body>balancer-manager<br></body")
    with pytest.raises(ValueError):
        balancer.parse_xml("")


def test_parse_xml_without_balancers_is_empty():
    assert balancer.parse_xml(page()) == {}


def test_a_missing_busy_reads_as_zero():
    text = www_page(busy1=4).replace("<httpd:busy>4</httpd:busy>", "")
    member = balancer.parse_xml(text)["www"].members[0]
    assert member.busy == 0


@pytest.mark.parametrize(("status", "flags", "enabled", "out"), [
    ("Init Ok ", {"Init", "Ok"}, True, False),
    ("Init Dis ", {"Init", "Dis"}, False, True),
    ("Init Drn Ok ", {"Init", "Drn", "Ok"}, False, True),
    ("Init Dis Drn Ok", {"Init", "Dis", "Drn", "Ok"}, False, True),
    ("Init Err ", {"Init", "Err"}, False, False),
    ("Init Stop ", {"Init", "Stop"}, False, True),
    ("Init Stby Ok ", {"Init", "Stby", "Ok"}, False, False),
    ("Init HcFl Ok ", {"Init", "HcFl", "Ok"}, False, False),
    ("Init Ign Ok ", {"Init", "Ign", "Ok"}, True, False),
])
def test_status_is_parsed_as_flag_tokens(status, flags, enabled, out):
    member = balancer.parse_xml(www_page(status1=status))["www"].members[0]
    assert member.flags == frozenset(flags)
    assert member.enabled is enabled
    assert member.out is out


def test_status_text_lists_flags_in_a_stable_order():
    member = balancer.Member("w", frozenset({"Ok", "Drn", "Init"}), 0)
    assert member.status == "Init Drn Ok"
    assert balancer.Member("w", frozenset(), 0).status == "?"


# --- reading and changing flags through a runner ----------------------------------------------

def pages(host, *texts: str, fail_post: bool = False) -> FakeRunner:
    """Answers balancer-manager reads and POSTs from a sequence of pages (the last repeats);
    with `fail_post` a POST fails as curl does on a 403."""
    runner = scripted(host, *texts)
    if fail_post:
        runner.first(command_has("--data"), (22, "", "curl: (22) 403 Forbidden"))
    return runner


def www(runner: FakeRunner, pool) -> HostPool:
    return HostPool(runner, runner.host, pool)


def test_read_asks_the_hosts_manager_url_for_xml(web):
    host, pool = web
    runner = pages(host, www_page())
    bal = apache.read(www(runner, pool))
    assert bal.nonce == NONCE
    assert runner.commands == [balancer.xml_command("http://127.0.0.1:8081/balancer-manager")]


def test_read_of_a_page_without_the_pools_balancer_says_run_setup(web):
    host, pool = web
    runner = pages(host, page(("api", [worker(1, "Init Ok ", pool="api")])))
    with pytest.raises(AnswerError, match=r"balancer://www is not configured.*found: api"):
        apache.read(www(runner, pool))


def test_read_of_html_is_an_answer_error_naming_the_host_and_the_read(web):
    # an AnswerError reads "<host>: <what>: <problem>"
    host, pool = web
    runner = pages(host, "<html>forbidden")
    expected = (r"^web1: read balancer-manager http://127\.0\.0\.1:8081/balancer-manager: "
                r"balancer-manager did not answer XML")
    with pytest.raises(AnswerError, match=expected):
        apache.read(www(runner, pool))
    assert issubclass(AnswerError, RolloutError)


def test_member_of_an_unknown_replica_says_run_setup(web):
    host, pool = web
    at = www(pages(host, www_page()), pool)
    bal = balancer.parse_xml(www_page())["www"]
    assert balancer.member_of(bal, at.replica(2)).identity == "fcgi://www-2"
    with pytest.raises(RolloutError, match="fcgi://www-3 is not a member"):
        balancer.member_of(bal, at.replica(3))


def test_drain_posts_with_the_scraped_nonce_and_confirms_from_the_page(web):
    host, pool = web
    runner = pages(host, www_page(), www_page(status1="Init Drn Ok "))
    member = apache.drain(www(runner, pool).replica(1))
    assert member.flags == {"Init", "Drn", "Ok"}
    assert len(runner.commands) == 2
    assert runner.commands[1] == balancer.set_command(
        "http://127.0.0.1:8081/balancer-manager", "www",
        "unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1", NONCE, {"N": 1})


def test_disable_sets_disabled_and_drain(web):
    host, pool = web
    runner = pages(host, www_page(), www_page(status1="Init Dis Drn Ok "))
    member = apache.disable(www(runner, pool).replica(1))
    assert member.out and not member.enabled
    assert "w_status_D=1" in runner.commands[1] and "w_status_N=1" in runner.commands[1]


def test_a_member_already_in_the_wanted_state_is_posted_once_and_confirmed(web):
    # deliberate: the first attempt always posts (see apache.set_member), so that a dry run
    # shows every change a step asks for; the read-back confirms it
    host, pool = web
    runner = pages(host, www_page(status1="Init Dis Drn Ok "))
    member = apache.disable(www(runner, pool).replica(1))
    assert {"Dis", "Drn"} <= member.flags
    assert [("--data" in c) for c in runner.commands] == [False, True]


class Clock:
    """Stands in for the time module inside apache: sleeping advances the clock."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


def test_enable_clears_disabled_drain_and_stop(web):
    host, pool = web
    runner = pages(host, www_page(status1="Init Dis Drn Ok "), www_page())
    member, note = apache.enable(www(runner, pool).replica(1))
    assert member.enabled
    assert note == ""
    post = runner.commands[1]
    assert "w_status_D=0" in post and "w_status_N=0" in post and "w_status_S=0" in post


def test_enable_waits_for_a_stale_err_to_clear(web, monkeypatch):
    host, pool = web
    clock = Clock()
    monkeypatch.setattr(apache, "time", clock)
    runner = pages(host, www_page(status1="Init Dis Drn "), www_page(status1="Init Err "),
                   www_page(status1="Init Err "), www_page())
    member, note = apache.enable(www(runner, pool).replica(1))
    assert member.enabled
    assert note == ""
    assert 0 < clock.slept <= pool.retry + 2


def test_enable_with_an_err_that_stays_returns_a_note_instead_of_failing(web, monkeypatch):
    host, pool = web
    clock = Clock()
    monkeypatch.setattr(apache, "time", clock)
    runner = pages(host, www_page(status1="Init Dis Drn "), www_page(status1="Init Err "))
    member, note = apache.enable(www(runner, pool).replica(1))
    assert "Err" in member.flags
    assert f"retry={pool.retry}s" in note
    assert clock.slept <= pool.retry + 2 + 0.2


def test_a_change_apache_silently_ignores_is_reported_after_retries(web, monkeypatch):
    host, pool = web
    monkeypatch.setattr(apache, "time", Clock())
    runner = pages(host, www_page())  # Apache keeps answering "Init Ok"
    with pytest.raises(RolloutError, match=r"ignored \{'N': 1\} for fcgi://www-1.*Referer/nonce"):
        apache.drain(www(runner, pool).replica(1))
    posts = [c for c in runner.commands if "--data" in c]
    assert len(posts) == 3


def test_a_refused_post_is_a_rollout_error_naming_the_host(web):
    host, pool = web
    runner = pages(host, www_page(), fail_post=True)
    with pytest.raises(RolloutError, match=r"^web1: balancer-manager refused the change"):
        apache.drain(www(runner, pool).replica(1))
    assert [c for c in runner.commands if "--data" in c], "the POST was tried"


def test_a_read_sharing_a_round_trip_names_the_url_and_curls_words_when_it_fails(web):
    # in a `together`, a failed read must still say which balancer-manager and why
    host, pool = web
    at = www(FakeRunner(host), pool)
    both = together("read both", [balancer.read(at), probe("true", "other", lambda r: r.ok)])
    out = sections_output([("0", "", 7), ("1", "", 0)])
    err = "curl: (7) Failed to connect to 127.0.0.1 port 8081 after 0 ms: Couldn't connect\n"
    with pytest.raises(ValueError, match=r"balancer-manager http://127\.0\.0\.1:8081/"
                                         r"balancer-manager did not answer: curl: \(7\)"):
        both.read(RemoteResult(both.text, 0, out, err))
