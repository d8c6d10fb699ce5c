"""Apache as the pool's balancer: take a replica out of rotation, put it back, read whether
it is in, through balancer-manager (web/balancer.py builds the commands).

Traps handled here (ARCHITECTURE.md, "Traps"): a change is a form POST that Apache ignores
silently without a same-host Referer and the current nonce, so every change is read back
and retried; an `Err` left by a failed connection is cleared by Apache only when traffic
tries the member again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fpm_fleet.core.errors import RemoteError, RolloutError
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.web import balancer
from fpm_fleet.web.balancer import Balancer, Member


def read(at: HostPool) -> Balancer:
    return at.ask(balancer.read(at))


ENABLE = {"D": 0, "N": 0, "S": 0, "H": 0}  # clear drain, disabled, stopped and standby
DRAIN = {"N": 1}
# parked (keep_previous): drained, and a hot standby, so that preflights never take it for a
# replica left out by an interrupted run, and Apache would still use it if every other
# member failed
PARK = {"N": 1, "H": 1}
DISABLE = {"D": 1, "N": 1}

Flags = dict[str, int]


def set_member(r: Replica, flags: Flags, attempts: int = 3) -> Member:
    """Change a member's flags and confirm from the page read back (set_members)."""
    return balancer.member_of(set_members(r.at, [(r, flags)], attempts), r)


def set_members(at: HostPool, changes: Sequence[tuple[Replica, Flags]],
                attempts: int = 3, current: Balancer | None = None) -> Balancer:
    """Change several members' flags in one round trip, in order, and confirm from the page
    read back that Apache applied them; returns the balancer as read back.

    The first attempt posts even when the page already shows the flags: it costs one POST
    where the steps rarely ask for a state a member is already in, and a dry run (which
    reads the real balancer but only records the changes before) then shows every change
    its step asks for. A retry posts only what is still missing, after a fresh read (the
    nonce changes when Apache restarts; another run may have applied them meanwhile).
    `current`: the balancer as the caller just read it (its nonce and members), which
    saves a read; a stale one costs a retry."""
    found, pending = current or read(at), list(changes)
    for attempt in range(attempts):
        if attempt:
            time.sleep(0.05)
            found = read(at)
            pending = _missing(found, pending)
            if not pending:
                break
        try:
            found = at.ask(balancer.set_many(at, found, pending))
        except RemoteError as exc:
            raise RolloutError(f"{at.host.name}: balancer-manager refused the change: {exc}") \
                from None
        pending = _missing(found, pending)
        if not pending:
            break
    if pending:
        r, flags = pending[0]
        raise RolloutError(f"{at.host.name}: balancer-manager ignored {flags} for {r.member} "
                           f"(status {balancer.member_of(found, r).status}); check "
                           "Referer/nonce handling")
    return found


def _missing(found: Balancer, changes: list[tuple[Replica, Flags]]) -> list[tuple[Replica, Flags]]:
    return [(r, f) for r, f in changes if not balancer.applied(balancer.member_of(found, r), f)]


def drain(r: Replica) -> Member:
    """Take a member out of rotation: no new request is routed to it.

    Drain, not disable: a request Apache routed to the member just before the change still
    connects to a draining member, whereas a disabled one fails it at connect time (it is
    retried on another member, but the member is marked Err).
    """
    return set_member(r, DRAIN)


def disable(r: Replica) -> Member:
    """Mark a stopped member disabled, so status shows it is out on purpose."""
    return set_member(r, DISABLE)


def enable(r: Replica) -> tuple[Member, str]:
    """Clear drain, disabled, stopped and standby; then wait for `Ok` (_err_cleared)."""
    member, notes = _err_cleared(r.at, {r.n: set_member(r, ENABLE)})
    return member[r.n], notes.get(r.n, "")


def flip(at: HostPool, into: Sequence[Replica], out: Sequence[Replica],
         out_flags: Flags = DRAIN, current: Balancer | None = None,
         ) -> tuple[Balancer, dict[int, Member], dict[int, str]]:
    """Put `into` in rotation and take `out` out (drained, or `out_flags`: parked, disabled)
    in one round trip, `into` first: capacity never drops, and no new request reaches `out`
    once this returns. Returns the balancer read back, then `into`'s members and notes as
    _err_cleared leaves them."""
    found = set_members(at, [*((r, ENABLE) for r in into), *((r, out_flags) for r in out)],
                        current=current)
    entered, notes = _err_cleared(at, {r.n: balancer.member_of(found, r) for r in into})
    return found, entered, notes


def _err_cleared(at: HostPool, members: dict[int, Member]) -> tuple[dict[int, Member],
                                                                   dict[int, str]]:
    """Members just enabled, once an `Err` left by an earlier failed connection is gone.

    Apache clears it itself, only when a request tries the member after `retry` seconds:
    without traffic it stays displayed. The note says so instead of failing a healthy
    replica."""
    deadline = time.monotonic() + at.pool.retry + 2
    replicas = {n: at.replica(n) for n in members}
    while any("Err" in m.flags for m in members.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
        now = read(at)
        members = {n: balancer.member_of(now, r) for n, r in replicas.items()}
    note = f"Err from an earlier failed connection; Apache retries it after retry={at.pool.retry}s"
    return members, {n: note for n, m in members.items() if "Err" in m.flags}
