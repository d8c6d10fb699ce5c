"""nginx's upstreams (pure): the members' states as the running nginx answers them, and the
command that changes them (the nginx-members helper, templates/sh/nginx-members.sh), each
paired with its reader. The operations built on them are in web/nginx.py.

nginx has no runtime API for members: a state lives in the pool's upstream file (`down`,
`backup`) and takes effect at a graceful reload. What fpm-fleet reads back is what the
running workers were started with, from a `return` each pool's upstream file carries; it
is shown as the same `balancer.Balancer` Apache's balancer-manager gives, with the flags
the rollout knows (Drn, Dis, Stby), so the rollout reads both web servers alike.
"""

from __future__ import annotations

from collections.abc import Mapping

from fpm_fleet.core.inventory import Pool
from fpm_fleet.host.layout import NGINX_SOCKET
from fpm_fleet.host.pool import HostPool
from fpm_fleet.remote import shell
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.shell import q
from fpm_fleet.web.balancer import Balancer, Member

UP, DRAIN, DISABLE, PARK = "up", "drain", "disable", "park"
# each state as balancer-manager would show it: drained and disabled are both `down` in
# nginx, but the rollout (and status) tell an operator's drain from a stopped replica
FLAGS: dict[str, frozenset[str]] = {
    UP: frozenset({"Ok"}),
    DRAIN: frozenset({"Drn", "Ok"}),
    DISABLE: frozenset({"Dis", "Drn", "Ok"}),
    PARK: frozenset({"Drn", "Stby", "Ok"}),
}


def members_url(pool: Pool) -> str:
    return f"http://fpm-fleet/members (Host: {pool.name}, {NGINX_SOCKET})"


READ_TRIES = 50  # 0.1 s apart: nginx being restarted by someone answers again within


def read_command(pool: Pool) -> str:
    """Ask the running nginx; while it does not answer (someone restarts it: its socket is
    gone for a moment) ask again, for up to READ_TRIES / 10 seconds."""
    curl = (f"curl -sS --fail --max-time 2 --unix-socket {q(NGINX_SOCKET)} "
            f"-H {q('Host: ' + pool.name)} http://fpm-fleet/members")
    return (f"i=0; until {curl} 2>/dev/null; do i=$((i + 1)); "
            f"[ $i -lt {READ_TRIES} ] || {{ {curl}; exit; }}; sleep 0.1; done")


def read(at: HostPool) -> Command[Balancer]:
    """The pool's members as the running nginx has them."""
    return Command(read_command(at.pool), f"read nginx members of {at.pool.name}",
                   lambda res: parse(at, res.stdout))


def parse(at: HostPool, text: str) -> Balancer:
    """`pool=www 1=up 2=drain` -> the pool's Balancer (ValueError: anything else)."""
    words = text.split()
    pool = at.pool
    if not words:
        raise ValueError(f"nginx's members socket {NGINX_SOCKET} does not answer (is "
                         "nginx.service running? `fab setup` starts it)")
    if words[0] != f"pool={pool.name}":
        raise ValueError(f"nginx does not run the upstream of pool {pool.name} (answer "
                         f"{text.strip()[:80]!r}); run `fab setup`")
    members = []
    for word in words[1:]:
        n, _, state = word.partition("=")
        if not n.isdigit() or state not in FLAGS:
            raise ValueError(f"unreadable member state {word!r} from nginx")
        members.append(Member(worker=f"unix:{at.layout.sock(int(n))}|{pool.member(int(n))}",
                              flags=FLAGS[state], busy=0))
    return Balancer(name=pool.balancer, nonce="", members=tuple(members))


def state_of(member: Member) -> str:
    """The state a member read back is in (its flags are one of FLAGS)."""
    for state, flags in FLAGS.items():
        if member.flags == flags:
            return state
    raise ValueError(f"{member.identity}: flags {member.status} are no nginx state")


def states(balancer: Balancer, pool: Pool) -> dict[int, str]:
    """Slot number -> state, for every member read back."""
    numbers = {pool.member(n): n for n in pool.replica_numbers}
    return {numbers[m.identity]: state_of(m) for m in balancer.members
            if m.identity in numbers}


def stdin_lines(wanted: Mapping[int, str]) -> str:
    """The helper's input: one `N STATE` line per member, in slot order."""
    for state in wanted.values():
        if state not in FLAGS:
            raise ValueError(f"no nginx member state {state!r}")
    return "\n".join(f"{n} {wanted[n]}" for n in sorted(wanted))


def apply_command(pool: Pool, wanted: Mapping[int, str], sudo: bool) -> str:
    """Send every member's state to the helper, as root; it prints the running answer."""
    return (f"printf '%s\\n' {q(stdin_lines(wanted))} | "
            f"{shell.privileged(shell.nginx_members(pool.name), sudo)}")


def apply(at: HostPool, wanted: Mapping[int, str]) -> Command[Balancer]:
    """Rewrite the pool's upstream with `wanted` (every slot), test, reload gracefully and
    read back the running states. A dry run goes on as if nginx had loaded them."""
    names = ", ".join(f"{at.pool.replica_name(n)} {s}" for n, s in sorted(wanted.items()))
    return Command(apply_command(at.pool, wanted, at.host.sudo),
                   f"set nginx members {names}", lambda res: parse(at, res.stdout),
                   changes=True, assume=lambda: assumed(at, wanted))


def assumed(at: HostPool, wanted: Mapping[int, str]) -> Balancer:
    return parse(at, " ".join([f"pool={at.pool.name}",
                               *(f"{n}={s}" for n, s in sorted(wanted.items()))]))


def config_test(at: HostPool) -> Command[str]:
    """`nginx -t` (as root, through the helper): "" when it passes, else why not."""
    return Command(shell.privileged(shell.NGINX_CHECK, at.host.sudo), "nginx -t",
                   lambda res: "" if res.ok else (res.stderr.strip() or res.stdout.strip()
                                                  or f"exit {res.exited}"), check=False)


def initial(pool: Pool) -> dict[int, str]:
    """A fresh pool's states: its first set in rotation, the standby set out (nothing
    listens there yet)."""
    first = set(pool.sets[0])
    return {n: UP if n in first else DISABLE for n in pool.replica_numbers}
