"""The host's web server, whichever it is: the one place that picks Apache (balancer-manager,
web/apache.py) or nginx (upstream files and graceful reloads, web/nginx.py) by the host's
`web`. The rollout, status and check call these and never the drivers themselves.

Both answer with a `balancer.Balancer` whose members carry the same flags (Drn drained,
Dis disabled, Stby parked), so a replica reads in or out of rotation alike. A change of
several members of a pool is one round trip on Apache (form posts in order) and one reload
on nginx (each nginx change is a rewrite, a test and a reload).
"""

from __future__ import annotations

from collections.abc import Sequence

from fpm_fleet.core.errors import RolloutError
from fpm_fleet.core.inventory import NGINX, Host, Pool
from fpm_fleet.host.pool import HostPool, Replica
from fpm_fleet.remote.command import Command
from fpm_fleet.web import apache, balancer, nginx, upstream
from fpm_fleet.web.balancer import Balancer, Member

# the states a rollout asks for, in nginx's words; Apache's flags for each
UP, DRAIN, PARK, DISABLE = upstream.UP, upstream.DRAIN, upstream.PARK, upstream.DISABLE
APACHE_FLAGS = {UP: apache.ENABLE, DRAIN: apache.DRAIN, PARK: apache.PARK,
                DISABLE: apache.DISABLE}


def is_nginx(host: Host) -> bool:
    return host.web == NGINX


def name(host: Host) -> str:
    """How status and list name the host's web server (as the inventory spells it)."""
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


def check_config(at: HostPool) -> None:
    """A rollout's preflight, before anything changes: on nginx, `nginx -t` passes (every
    change there is a reload, which a config broken by someone else would refuse halfway
    through the rollout). Apache's changes need no reload: nothing to check."""
    if is_nginx(at.host):
        why = at.ask(upstream.config_test(at))
        if why:
            raise RolloutError(f"{at.host.name}: {why}; nothing was changed")


def member(r: Replica) -> Member:
    return balancer.member_of(read(r.at), r)


def drain(r: Replica) -> Member:
    return nginx.drain(r) if is_nginx(r.host) else apache.drain(r)


def disable(r: Replica) -> Member:
    return nginx.disable(r) if is_nginx(r.host) else apache.disable(r)


def enable(r: Replica) -> tuple[Member, str]:
    return nginx.enable(r) if is_nginx(r.host) else apache.enable(r)


def set_all(at: HostPool, replicas: Sequence[Replica], state: str) -> Balancer:
    """Several replicas of one pool in `state` at once; the members read back."""
    if is_nginx(at.host):
        return nginx.apply(at, {r.n: state for r in replicas})
    return apache.set_members(at, [(r, APACHE_FLAGS[state]) for r in replicas])


def disable_all(at: HostPool, replicas: Sequence[Replica]) -> None:
    if replicas:
        set_all(at, replicas, DISABLE)


def flip(at: HostPool, into: Sequence[Replica], out: Sequence[Replica],
         out_state: str = DRAIN, current: Balancer | None = None,
         ) -> tuple[Balancer, dict[int, Member], dict[int, str]]:
    """`into` in rotation and `out` out of it (drained, parked or disabled) at once, `into`
    first on Apache; on nginx one reload makes both true together. `current`: the members
    as the caller read them (saves a read). Returns the members read back, `into`'s
    members, and notes about them (Apache's lingering Err)."""
    if not is_nginx(at.host):
        return apache.flip(at, into, out, APACHE_FLAGS[out_state], current=current)
    found = nginx.apply(at, {**{r.n: out_state for r in out}, **{r.n: UP for r in into}},
                        current)
    return found, {r.n: balancer.member_of(found, r) for r in into}, {}


def disable_command(at: HostPool, bal: Balancer, replicas: Sequence[Replica]) -> str:
    """The shell text that marks `replicas` disabled, for a job the host runs by itself
    (rollout/retire.py) once they stopped; `bal` is the members as read at the flip."""
    if is_nginx(at.host):
        wanted = {**upstream.states(bal, at.pool), **{r.n: DISABLE for r in replicas}}
        return upstream.apply_command(at.pool, wanted, at.host.sudo)
    members = [(balancer.member_of(bal, r).worker, apache.DISABLE) for r in replicas]
    return balancer.set_many_command(at.manager_url, at.pool.balancer, bal.nonce, members)
