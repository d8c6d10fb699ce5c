"""balancer-manager: parse its XML (pure) and change member flags over SSH.

Traps handled here (DESIGN.md section 3): changes are form POSTs that Apache ignores
silently without a same-host Referer and the current nonce, so every change is read back;
status strings are flags run together, so they are parsed as tokens.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from fpm_fleet.errors import AnswerError, RemoteError, RolloutError
from fpm_fleet.inventory import Host, Pool
from fpm_fleet.remote import shell
from fpm_fleet.remote.ssh import Executor

NS = "{http://httpd.apache.org}"
OUT_FLAGS = frozenset({"Dis", "Drn", "Stop", "Err", "HcFl", "Stby", "Spar"})


@dataclass(frozen=True)
class Member:
    """One balancer member as balancer-manager reports it."""

    worker: str
    flags: frozenset[str]
    busy: int
    elected: int

    @property
    def identity(self) -> str:
        """`fcgi://<pool>-<n>`: the part after the unix socket path."""
        return self.worker.rsplit("|", 1)[-1]

    @property
    def status(self) -> str:
        order = ("Init", "Ign", "Drn", "Dis", "Stop", "Stby", "Spar", "HcFl", "Err", "Ok")
        return " ".join(f for f in order if f in self.flags) or "?"

    @property
    def enabled(self) -> bool:
        """Taking new requests: Ok and none of the flags that keep it out."""
        return "Ok" in self.flags and not (self.flags & OUT_FLAGS)

    @property
    def out(self) -> bool:
        """Set aside by an operator (drained, disabled or stopped)."""
        return bool(self.flags & {"Dis", "Drn", "Stop"})


@dataclass(frozen=True)
class Balancer:
    name: str
    nonce: str
    members: tuple[Member, ...]

    def member(self, identity: str) -> Member | None:
        for m in self.members:
            if m.identity == identity:
                return m
        return None


def parse_xml(text: str) -> dict[str, Balancer]:
    """balancer-manager `?xml=1` -> balancers by short name (without `balancer://`)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ValueError(f"balancer-manager did not answer XML ({exc})") from None
    out: dict[str, Balancer] = {}
    for b in root.iter(f"{NS}balancer"):
        name = _text(b, "name").removeprefix("balancer://")
        members = tuple(
            Member(worker=_text(w, "name"), flags=frozenset(_text(w, "status").split()),
                   busy=int(_text(w, "busy") or 0), elected=int(_text(w, "elected") or 0))
            for w in b.iter(f"{NS}worker"))
        out[name] = Balancer(name=name, nonce=_text(b, "nonce"), members=members)
    return out


def _text(node: ET.Element, tag: str) -> str:
    child = node.find(f"{NS}{tag}")
    return (child.text or "").strip() if child is not None else ""


def read(ex: Executor, host: Host, pool: Pool) -> Balancer:
    """The pool's balancer as Apache sees it now."""
    url = host.manager_url(pool)
    result = ex.run(shell.balancer_xml(url), f"read balancer-manager {url}")
    return pick(host, pool, result.stdout)


def pick(host: Host, pool: Pool, text: str) -> Balancer:
    """The pool's balancer from a `?xml=1` answer; anything else is the host's RolloutError."""
    try:
        balancers = parse_xml(text)
    except ValueError as exc:
        raise AnswerError(f"{host.name}: {exc}") from None
    if pool.balancer not in balancers:
        raise AnswerError(f"{host.name}: balancer://{pool.balancer} is not configured in "
                           f"Apache (found: {', '.join(balancers) or 'none'}); run `fab setup`")
    return balancers[pool.balancer]


def member_of(balancer: Balancer, host: Host, pool: Pool, n: int) -> Member:
    member = balancer.member(pool.member(n))
    if member is None:
        raise RolloutError(f"{host.name}: {pool.member(n)} is not a member of "
                           f"balancer://{pool.balancer}; run `fab setup`")
    return member


def set_member(ex: Executor, host: Host, pool: Pool, n: int, flags: dict[str, int],
               attempts: int = 3) -> Member:
    """Change a member's flags and confirm from a fresh read that Apache applied them."""
    url = host.manager_url(pool)
    for _ in range(attempts):
        balancer = read(ex, host, pool)
        member = member_of(balancer, host, pool, n)
        if _applied(member, flags):
            return member
        try:
            result = ex.run(shell.balancer_set(url, pool.balancer, member.worker,
                                               balancer.nonce, flags),
                            f"set {pool.member(n)} {flags} in balancer-manager")
        except RemoteError as exc:
            raise RolloutError(f"{host.name}: balancer-manager refused the change: {exc}") \
                from None
        member = member_of(pick(host, pool, result.stdout), host, pool, n)
        if _applied(member, flags):
            return member
        time.sleep(0.05)
    raise RolloutError(f"{host.name}: balancer-manager ignored {flags} for {pool.member(n)} "
                       f"(status {member.status}); check Referer/nonce handling")


FLAG_TOKENS = {"D": "Dis", "N": "Drn", "S": "Stop", "I": "Ign", "H": "Stby", "R": "Spar"}


def _applied(member: Member, flags: dict[str, int]) -> bool:
    return all((FLAG_TOKENS[f] in member.flags) == bool(v) for f, v in flags.items())


def drain(ex: Executor, host: Host, pool: Pool, n: int) -> Member:
    """Take a member out of rotation: no new request is routed to it.

    Drain, not disable: a request Apache routed to the member just before the change still
    connects to a draining member, whereas a disabled one fails it at connect time (it is
    retried on another member, but the member is marked Err).
    """
    return set_member(ex, host, pool, n, {"N": 1})


def disable(ex: Executor, host: Host, pool: Pool, n: int) -> Member:
    """Mark a stopped member disabled, so status shows it is out on purpose."""
    return set_member(ex, host, pool, n, {"D": 1, "N": 1})


def enable(ex: Executor, host: Host, pool: Pool, n: int) -> tuple[Member, str]:
    """Clear drain, disabled and stopped; then wait for `Ok`.

    An `Err` left by an earlier failed connection is cleared by Apache itself, only when a
    request tries the member after `retry` seconds: without traffic it stays displayed. The
    note says so instead of failing a healthy replica.
    """
    member = set_member(ex, host, pool, n, {"D": 0, "N": 0, "S": 0})
    deadline = time.monotonic() + pool.retry + 2
    while "Err" in member.flags and time.monotonic() < deadline:
        time.sleep(0.2)
        member = member_of(read(ex, host, pool), host, pool, n)
    note = "" if "Err" not in member.flags else \
        f"Err from an earlier failed connection; Apache retries it after retry={pool.retry}s"
    return member, note
