"""fpm_fleet.web.balancer: parse balancer-manager's ?xml=1 page, and change flags with read-back."""

from __future__ import annotations

import pytest

from fpm_fleet.errors import RemoteError, RemoteResult, RolloutError
from fpm_fleet.remote import shell
from fpm_fleet.web import balancer

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
    assert (first.busy, first.elected) == (3, 17)
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


def test_missing_busy_and_elected_read_as_zero():
    text = www_page().replace("<httpd:busy>0</httpd:busy>", "").replace(
        "<httpd:elected>17</httpd:elected>", "")
    member = balancer.parse_xml(text)["www"].members[0]
    assert (member.busy, member.elected) == (0, 0)


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
    member = balancer.Member("w", frozenset({"Ok", "Drn", "Init"}), 0, 0)
    assert member.status == "Init Drn Ok"
    assert balancer.Member("w", frozenset(), 0, 0).status == "?"


# --- reading and changing flags through an executor --------------------------------------------

class ScriptedExecutor:
    """Answers balancer-manager reads and POSTs from a scripted sequence of pages."""

    def __init__(self, host, pages: list[str], fail_post: bool = False) -> None:
        self.host = host
        self.pages = pages
        self.fail_post = fail_post
        self.commands: list[str] = []

    def run(self, command, what, *, check=True, timeout=None):
        self.commands.append(command)
        if command.startswith("curl") and "--data" in command and self.fail_post:
            raise RemoteError(self.host.name, what,
                              RemoteResult(command, 22, "", "curl: (22) 403 Forbidden"))
        text = self.pages.pop(0) if len(self.pages) > 1 else self.pages[0]
        return RemoteResult(command, 0, text, "")

    def stream(self, command, what, source, *, timeout=None):
        raise AssertionError("not used")


def test_read_asks_the_hosts_manager_url_for_xml(web):
    host, pool = web
    ex = ScriptedExecutor(host, [www_page()])
    bal = balancer.read(ex, host, pool)
    assert bal.nonce == NONCE
    assert ex.commands == [shell.balancer_xml("http://127.0.0.1:8081/balancer-manager")]


def test_read_of_a_page_without_the_pools_balancer_says_run_setup(web):
    host, pool = web
    ex = ScriptedExecutor(host, [page(("api", [worker(1, "Init Ok ", pool="api")]))])
    with pytest.raises(RolloutError, match=r"balancer://www is not configured.*found: api"):
        balancer.read(ex, host, pool)


def test_read_of_html_is_a_rollout_error_naming_the_host(web):
    host, pool = web
    ex = ScriptedExecutor(host, ["<html>forbidden"])
    with pytest.raises(RolloutError, match=r"^web1: balancer-manager did not answer XML"):
        balancer.read(ex, host, pool)


def test_member_of_an_unknown_replica_says_run_setup(web):
    host, pool = web
    bal = balancer.parse_xml(www_page())["www"]
    assert balancer.member_of(bal, host, pool, 2).identity == "fcgi://www-2"
    with pytest.raises(RolloutError, match="fcgi://www-3 is not a member"):
        balancer.member_of(bal, host, pool, 3)


def test_drain_posts_with_the_scraped_nonce_and_confirms_from_the_page(web):
    host, pool = web
    ex = ScriptedExecutor(host, [www_page(), www_page(status1="Init Drn Ok ")])
    member = balancer.drain(ex, host, pool, 1)
    assert member.flags == {"Init", "Drn", "Ok"}
    assert len(ex.commands) == 2
    assert ex.commands[1] == shell.balancer_set(
        "http://127.0.0.1:8081/balancer-manager", "www",
        "unix:/srv/fpm-fleet/www/run/www-1.sock|fcgi://www-1", NONCE, {"N": 1})


def test_disable_sets_disabled_and_drain(web):
    host, pool = web
    ex = ScriptedExecutor(host, [www_page(), www_page(status1="Init Dis Drn Ok ")])
    member = balancer.disable(ex, host, pool, 1)
    assert member.out and not member.enabled
    assert "w_status_D=1" in ex.commands[1] and "w_status_N=1" in ex.commands[1]


def test_a_member_already_in_the_wanted_state_is_not_posted_again(web):
    host, pool = web
    ex = ScriptedExecutor(host, [www_page(status1="Init Dis Drn Ok ")])
    balancer.disable(ex, host, pool, 1)
    assert len(ex.commands) == 1
    assert "--data" not in ex.commands[0]


class Clock:
    """Stands in for the time module inside balancer: sleeping advances the clock."""

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
    ex = ScriptedExecutor(host, [www_page(status1="Init Dis Drn Ok "), www_page()])
    member, note = balancer.enable(ex, host, pool, 1)
    assert member.enabled
    assert note == ""
    post = ex.commands[1]
    assert "w_status_D=0" in post and "w_status_N=0" in post and "w_status_S=0" in post


def test_enable_waits_for_a_stale_err_to_clear(web, monkeypatch):
    host, pool = web
    clock = Clock()
    monkeypatch.setattr(balancer, "time", clock)
    ex = ScriptedExecutor(host, [www_page(status1="Init Dis Drn "),
                                 www_page(status1="Init Err "), www_page(status1="Init Err "),
                                 www_page()])
    member, note = balancer.enable(ex, host, pool, 1)
    assert member.enabled
    assert note == ""
    assert 0 < clock.slept <= pool.retry + 2


def test_enable_with_an_err_that_stays_returns_a_note_instead_of_failing(web, monkeypatch):
    host, pool = web
    clock = Clock()
    monkeypatch.setattr(balancer, "time", clock)
    ex = ScriptedExecutor(host, [www_page(status1="Init Dis Drn "), www_page(status1="Init Err ")])
    member, note = balancer.enable(ex, host, pool, 1)
    assert "Err" in member.flags
    assert f"retry={pool.retry}s" in note
    assert clock.slept <= pool.retry + 2 + 0.2


def test_a_change_apache_silently_ignores_is_reported_after_retries(web, monkeypatch):
    host, pool = web
    monkeypatch.setattr(balancer, "time", Clock())
    ex = ScriptedExecutor(host, [www_page()])  # Apache keeps answering "Init Ok"
    with pytest.raises(RolloutError, match=r"ignored \{'N': 1\} for fcgi://www-1.*Referer/nonce"):
        balancer.drain(ex, host, pool, 1)
    posts = [c for c in ex.commands if "--data" in c]
    assert len(posts) == 3


def test_a_refused_post_is_a_rollout_error_naming_the_host(web):
    host, pool = web
    ex = ScriptedExecutor(host, [www_page()], fail_post=True)
    with pytest.raises(RolloutError, match=r"^web1: balancer-manager refused the change"):
        balancer.drain(ex, host, pool, 1)
