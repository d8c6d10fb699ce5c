"""Apache's balancer-manager: its XML parsed (pure) and its two commands, read and set,
each paired with its reader. The operations built on them are in web/apache.py.

Status strings are flags run together ("Drn Ok"), so they are parsed as tokens.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from fpm_fleet.core.errors import RemoteResult, RolloutError
from fpm_fleet.core.inventory import Pool
from fpm_fleet.host.layout import MANAGER_NETRC
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.shell import q

# balancer-manager wants fpm-fleet's credential; curl reads it from a file readable only by
# root and the deploy user, so it never shows on a command line (ps, /proc/PID/cmdline).
# The options of each request (curl's `--next` starts a request with none).
PER_REQUEST = f"--fail --max-time 5 --netrc-file {q(MANAGER_NETRC)}"


def xml_command(url: str) -> str:
    """Read balancer-manager as XML (it answers with HTML without a same-host Referer)."""
    return f"curl -sS {_xml_request(url)}"


def _xml_request(url: str) -> str:
    return f"{PER_REQUEST} -H {q('Referer: ' + url)} {q(url + '?xml=1')}"


def _post_request(url: str, balancer: str, worker: str, nonce: str,
                  flags: Mapping[str, int]) -> str:
    """POST one member's status flags (the form balancer-manager's page sends)."""
    form = [f"--data-urlencode {q(f'{k}={v}')}" for k, v in
            (("b", balancer), ("w", worker), ("nonce", nonce))]
    form += [f"--data {q(f'w_status_{flag}={value}')}" for flag, value in flags.items()]
    return f"{PER_REQUEST} -o /dev/null -H {q('Referer: ' + url)} {' '.join(form)} {q(url)}"


def set_command(url: str, balancer: str, worker: str, nonce: str,
                flags: Mapping[str, int]) -> str:
    """POST a member's status flags, then read the page back in the same round trip."""
    return set_many_command(url, balancer, nonce, [(worker, flags)])


def set_many_command(url: str, balancer: str, nonce: str,
                     changes: Sequence[tuple[str, Mapping[str, int]]]) -> str:
    """POST several members' flags in the order given (a flip: the new set in before the old
    one goes out), then read the page back, all in one round trip and one curl: its
    requests go one after another over one connection (a process and a connection each
    cost more than the request), and --fail-early stops at the first refused one."""
    posts = [_post_request(url, balancer, worker, nonce, flags) for worker, flags in changes]
    return "curl -sS --fail-early " + " --next ".join([*posts, _xml_request(url)])


NS = "{http://httpd.apache.org}"
OUT_FLAGS = frozenset({"Dis", "Drn", "Stop", "Err", "HcFl", "Stby", "Spar"})


@dataclass(frozen=True)
class Member:
    """One balancer member as balancer-manager reports it."""

    worker: str
    flags: frozenset[str]
    busy: int

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
                   busy=int(_text(w, "busy") or 0))
            for w in b.iter(f"{NS}worker"))
        out[name] = Balancer(name=name, nonce=_text(b, "nonce"), members=members)
    return out


def _text(node: ET.Element, tag: str) -> str:
    child = node.find(f"{NS}{tag}")
    return (child.text or "").strip() if child is not None else ""


def read(at: HostPool) -> Command[Balancer]:
    """The pool's balancer as Apache sees it now. When it shares a round trip (`together`),
    a failed read is said with the URL and curl's own words, as a lone read's error is."""
    url = at.manager_url

    def parse(res: RemoteResult) -> Balancer:
        if not res.ok:
            cause = res.stderr.strip().splitlines()[-1:] or [f"exit {res.exited}"]
            raise ValueError(f"balancer-manager {url} did not answer: {cause[0]}")
        return pick(at.pool, res.stdout)

    return Command(xml_command(url), f"read balancer-manager {url}", parse)


def pick(pool: Pool, text: str) -> Balancer:
    """The pool's balancer from a `?xml=1` answer (ValueError: anything else)."""
    balancers = parse_xml(text)
    if pool.balancer not in balancers:
        raise ValueError(f"balancer://{pool.balancer} is not configured in Apache (found: "
                         f"{', '.join(balancers) or 'none'}); run `fab setup`")
    return balancers[pool.balancer]


def member_of(balancer: Balancer, r: Replica) -> Member:
    member = balancer.member(r.member)
    if member is None:
        raise RolloutError(f"{r.host.name}: {r.member} is not a member of "
                           f"balancer://{r.pool.balancer}; run `fab setup`")
    return member


def set_flags(r: Replica, current: Balancer, flags: dict[str, int]) -> Command[Balancer]:
    """POST a member's flags with the balancer's current nonce; the answer is the page read
    back. A dry run goes on as if Apache applied them."""
    return set_many(r.at, current, [(r, flags)])


def set_many(at: HostPool, current: Balancer,
             changes: Sequence[tuple[Replica, dict[str, int]]]) -> Command[Balancer]:
    """Several members' flags in one round trip, in order; the answer is the page read back.
    A dry run goes on as if Apache applied them all."""
    members = [(member_of(current, r), flags) for r, flags in changes]
    text = set_many_command(at.manager_url, at.pool.balancer, current.nonce,
                            [(m.worker, flags) for m, flags in members])
    what = ", ".join(f"{r.member} {flags}" for r, flags in changes)

    def assumed() -> Balancer:
        after = current
        for r, flags in changes:
            after = with_flags(after, member_of(after, r), flags)
        return after

    return Command(text, f"set {what} in balancer-manager", lambda res: pick(at.pool, res.stdout),
                   changes=True, assume=assumed)


FLAG_TOKENS = {"D": "Dis", "N": "Drn", "S": "Stop", "I": "Ign", "H": "Stby", "R": "Spar"}


def applied(member: Member, flags: dict[str, int]) -> bool:
    return all((FLAG_TOKENS[f] in member.flags) == bool(v) for f, v in flags.items())


def with_flags(balancer: Balancer, member: Member, flags: dict[str, int]) -> Balancer:
    """`balancer` as it reads once `flags` are applied to `member` (what a dry run assumes)."""
    tokens = set(member.flags)
    for flag, value in flags.items():
        (tokens.add if value else tokens.discard)(FLAG_TOKENS[flag])
    if not tokens & OUT_FLAGS:
        tokens.add("Ok")
    changed = replace(member, flags=frozenset(tokens))
    return replace(balancer, members=tuple(changed if m == member else m
                                           for m in balancer.members))
