"""nginx as the pool's balancer: take replicas out of rotation, put them back, read whether
they are in (web/upstream.py builds the commands). The same operations as web/apache.py,
with the same return values, plus `apply`: several members in one reload.

Traps handled here and in the helper (ARCHITECTURE.md, "nginx"): nginx has no runtime API,
so every change is a rewrite of the pool's upstream, `nginx -t` (a refused config is put
back) and a graceful reload; `systemctl reload nginx` returns before the master loaded
anything, so the change is confirmed from the running workers' answer, never the file.
"""

from __future__ import annotations

from collections.abc import Mapping

from fpm_fleet.core.errors import RemoteError, RolloutError
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.web import balancer, upstream
from fpm_fleet.web.balancer import Balancer, Member


def read(at: HostPool) -> Balancer:
    return at.ask(upstream.read(at))


def apply(at: HostPool, changes: Mapping[int, str], current: Balancer | None = None,
          ) -> Balancer:
    """Put the members numbered in `changes` in their states with one rewrite and one
    reload; the others keep the state the running nginx has (`current`, when the caller
    has just read it). Returns the members as the running nginx has them afterwards (each
    change confirmed)."""
    found = current or read(at)
    wanted = upstream.states(found, at.pool)
    missing = [at.pool.member(n) for n in changes if n not in wanted]
    if missing:
        raise RolloutError(f"{at.host.name}: {', '.join(missing)} not in nginx's upstream of "
                           f"pool {at.pool.name}; run `fab setup`")
    wanted.update(changes)
    try:
        after = at.ask(upstream.apply(at, wanted))
    except RemoteError as exc:
        raise RolloutError(f"{at.host.name}: nginx refused the change: "
                           f"{exc.result.stderr.strip() or exc}") from None
    for n, state in changes.items():
        got = balancer.member_of(after, at.replica(n))
        if got.flags != upstream.FLAGS[state]:
            raise RolloutError(f"{at.host.name}: nginx runs {got.identity} as {got.status} "
                               f"after the reload (want {state})")
    return after


def _one(r: Replica, state: str) -> Member:
    return balancer.member_of(apply(r.at, {r.n: state}), r)


def drain(r: Replica) -> Member:
    """Out of rotation (`down`): new requests go to the other members; requests in flight,
    and those old workers still hold, finish where they are."""
    return _one(r, upstream.DRAIN)


def disable(r: Replica) -> Member:
    """Mark a stopped member out on purpose (`down`, shown Dis)."""
    return _one(r, upstream.DISABLE)


def enable(r: Replica) -> tuple[Member, str]:
    """Back in rotation. nginx keeps no error state a request must clear (a failed connect
    only skips the server for its fail_timeout), so there is never a note."""
    return _one(r, upstream.UP), ""
