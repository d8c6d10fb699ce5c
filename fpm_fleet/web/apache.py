"""Apache as the pool's balancer: take a replica out of rotation, put it back, read whether
it is in, through balancer-manager (web/balancer.py builds the commands).

Traps handled here (ARCHITECTURE.md, "Traps"): a change is a form POST that Apache ignores
silently without a same-host Referer and the current nonce, so every change is read back
and retried; an `Err` left by a failed connection is cleared by Apache only when traffic
tries the member again.
"""

from __future__ import annotations

import time

from fpm_fleet.core.errors import RemoteError, RolloutError
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.web import balancer
from fpm_fleet.web.balancer import Balancer, Member


def read(at: HostPool) -> Balancer:
    return at.ask(balancer.read(at))


def member(r: Replica) -> Member:
    """The replica's member as Apache sees it now."""
    return balancer.member_of(read(r.at), r)


def set_member(r: Replica, flags: dict[str, int], attempts: int = 3) -> Member:
    """Change a member's flags and confirm from the page read back that Apache applied them.

    The first attempt posts even when the page already shows the flags: it costs one POST
    where the steps rarely ask for a state a member is already in, and a dry run (which
    reads the real balancer but only records the changes before) then shows every change
    its step asks for. A retry first checks whether another run applied them meanwhile."""
    found = read(r.at)
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.05)
            found = read(r.at)
            if balancer.applied(balancer.member_of(found, r), flags):
                return balancer.member_of(found, r)
        try:
            after = r.ask(balancer.set_flags(r, found, flags))
        except RemoteError as exc:
            raise RolloutError(f"{r.host.name}: balancer-manager refused the change: {exc}") \
                from None
        changed = balancer.member_of(after, r)
        if balancer.applied(changed, flags):
            return changed
    raise RolloutError(f"{r.host.name}: balancer-manager ignored {flags} for {r.member} "
                       f"(status {changed.status}); check Referer/nonce handling")


def drain(r: Replica) -> Member:
    """Take a member out of rotation: no new request is routed to it.

    Drain, not disable: a request Apache routed to the member just before the change still
    connects to a draining member, whereas a disabled one fails it at connect time (it is
    retried on another member, but the member is marked Err).
    """
    return set_member(r, {"N": 1})


def park(r: Replica) -> Member:
    """Out of rotation, still running (keep_previous): drained, and a hot standby, so that
    preflights never take it for a replica left out by an interrupted run, and Apache would
    still use it if every other member failed."""
    return set_member(r, {"N": 1, "H": 1})


def disable(r: Replica) -> Member:
    """Mark a stopped member disabled, so status shows it is out on purpose."""
    return set_member(r, {"D": 1, "N": 1})


def enable(r: Replica) -> tuple[Member, str]:
    """Clear drain, disabled and stopped; then wait for `Ok`.

    An `Err` left by an earlier failed connection is cleared by Apache itself, only when a
    request tries the member after `retry` seconds: without traffic it stays displayed. The
    note says so instead of failing a healthy replica.
    """
    found = set_member(r, {"D": 0, "N": 0, "S": 0, "H": 0})
    deadline = time.monotonic() + r.pool.retry + 2
    while "Err" in found.flags and time.monotonic() < deadline:
        time.sleep(0.2)
        found = member(r)
    note = "" if "Err" not in found.flags else \
        f"Err from an earlier failed connection; Apache retries it after retry={r.pool.retry}s"
    return found, note
