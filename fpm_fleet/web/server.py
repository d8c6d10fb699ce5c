"""The host's web server, whichever it is: the one place that picks Apache (balancer-manager,
web/apache.py) or nginx (upstream files and graceful reloads, web/nginx.py) by the host's
`web`. The rollout, status and check call these and never the drivers themselves.

Both answer with a `balancer.Balancer` whose members carry the same flags (Drn drained,
Dis disabled, Stby parked), so a replica reads in or out of rotation alike. The `*_all`
operations change several replicas of one pool: Apache one member after another, nginx all
in one reload (each nginx change is a rewrite, a test and a reload).
"""

from __future__ import annotations

from collections.abc import Sequence

from fpm_fleet.core.errors import RolloutError
from fpm_fleet.core.inventory import NGINX, Host, Pool
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote.command import Command
from fpm_fleet.web import apache, balancer, nginx, upstream
from fpm_fleet.web.balancer import Balancer, Member


def is_nginx(host: Host) -> bool:
    return host.web == NGINX


def name(host: Host) -> str:
    """How status, list and check name the host's web server."""
    return host.web


def label(host: Host) -> str:
    """The web server's name in messages."""
    return "nginx" if is_nginx(host) else "Apache"


def binary(host: Host) -> str:
    """The web server's program, as `fab check` looks for it."""
    return "nginx" if is_nginx(host) else "apache2"


def describe(host: Host, pool: Pool) -> tuple[str, str, str]:
    """How `fab list` shows a pool's balancer on a host: its name, the method that picks a
    member, and where fpm-fleet reads the members."""
    if is_nginx(host):
        return (f"upstream fpm_fleet_{pool.balancer}", "least_conn",
                upstream.members_url(pool))
    return f"balancer://{pool.balancer}", "bybusyness", host.manager_url(pool)


def read_command(at: HostPool) -> Command[Balancer]:
    """The read of the pool's members, to batch with other probes (`together`)."""
    return upstream.read(at) if is_nginx(at.host) else balancer.read(at)


def read(at: HostPool) -> Balancer:
    return at.ask(read_command(at))


def ready(at: HostPool) -> Balancer:
    """A rollout's preflight: the pool's members, read before anything changes; on nginx
    also `nginx -t`, since every change there is a reload that a config broken by someone
    else would refuse halfway through the rollout."""
    found = read(at)
    if is_nginx(at.host):
        why = at.ask(upstream.config_test(at))
        if why:
            raise RolloutError(f"{at.host.name}: {why}; nothing was changed")
    return found


def member(r: Replica) -> Member:
    return balancer.member_of(read(r.at), r)


def drain(r: Replica) -> Member:
    return nginx.drain(r) if is_nginx(r.host) else apache.drain(r)


def park(r: Replica) -> Member:
    return nginx.park(r) if is_nginx(r.host) else apache.park(r)


def disable(r: Replica) -> Member:
    return nginx.disable(r) if is_nginx(r.host) else apache.disable(r)


def enable(r: Replica) -> tuple[Member, str]:
    return nginx.enable(r) if is_nginx(r.host) else apache.enable(r)


def _all(replicas: Sequence[Replica], state: str) -> list[Member]:
    if not replicas:
        return []
    at = replicas[0].at
    if is_nginx(at.host):
        return nginx.set_many(at, replicas, state)
    one = {upstream.DRAIN: apache.drain, upstream.PARK: apache.park,
           upstream.DISABLE: apache.disable,
           upstream.UP: _apache_enable}[state]
    return [one(r) for r in replicas]


def _apache_enable(r: Replica) -> Member:
    return apache.enable(r)[0]


def drain_all(replicas: Sequence[Replica]) -> list[Member]:
    """Replicas of one pool out of rotation (nginx: one reload)."""
    return _all(replicas, upstream.DRAIN)


def park_all(replicas: Sequence[Replica]) -> list[Member]:
    return _all(replicas, upstream.PARK)


def disable_all(replicas: Sequence[Replica]) -> list[Member]:
    return _all(replicas, upstream.DISABLE)


def enable_all(replicas: Sequence[Replica]) -> list[Member]:
    return _all(replicas, upstream.UP)
