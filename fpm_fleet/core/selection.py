"""What a command acts on and in what order, from its options alone: --host, --pool and
--replica resolved against the inventory; release names; --canary, --parallel and
--sequential as a rollout's order. Nothing here reaches a host, and the module loads
little: every task module imports it at start-up, before the first hosts are connected
(ARCHITECTURE.md, Start-up).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from fpm_fleet.core.errors import ConfigError, UsageError
from fpm_fleet.core.inventory import Fleet, Host, Pool


@dataclass(frozen=True)
class Selection:
    hosts: tuple[Host, ...]
    pools: tuple[Pool, ...]
    replica: int | None = None

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def replicas(self, pool: Pool) -> list[int]:
        """The selected replica numbers of `pool` (every one without --replica)."""
        return [self.replica] if self.replica else list(pool.replica_numbers)


def _names(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def select(fleet: Fleet, host: str | None = None, pool: str | None = None,
           replica: int | str | None = None) -> Selection:
    """Resolve --host (comma list), --pool and --replica; unknown names list the valid ones."""
    known_hosts = [h.name for h in fleet.hosts]
    for name in _names(host):
        if name not in known_hosts:
            raise UsageError(f"unknown host {name!r}; valid hosts: {', '.join(known_hosts)}")
    known_pools = [p.name for p in fleet.pools]
    if pool and pool not in known_pools:
        raise UsageError(f"unknown pool {pool!r}; valid pools: {', '.join(known_pools)}")
    hosts = tuple(h for h in fleet.hosts if not _names(host) or h.name in _names(host))
    pools = tuple(p for p in fleet.pools if not pool or p.name == pool)
    n = _replica_number(replica, pools)
    return Selection(hosts, pools, n)


def _replica_number(replica: int | str | None, pools: tuple[Pool, ...]) -> int | None:
    if replica in (None, "", 0, "0"):
        return None
    try:
        n = int(replica)
    except ValueError:
        raise UsageError(f"--replica must be a number, got {replica!r}") from None
    valid = sorted({i for p in pools for i in p.replica_numbers})
    if n not in valid or any(n > p.replicas for p in pools):
        raise UsageError(f"unknown replica {n}; valid replicas: "
                         f"{', '.join(map(str, valid))} (use --pool to pick one pool)")
    return n


NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")


def validate_name(name: str) -> str:
    """Release names are letters, digits, '.', '_' and '-', not starting with '.'."""
    if not NAME.fullmatch(name or ""):
        raise ConfigError(f"release name {name!r} is not allowed: use letters, digits, "
                          "'.', '_' and '-', not starting with '.'")
    return name


# Hosts rolled at once after the canary stage. Parallel hosts cost the fleet no capacity:
# each host keeps serving during its own roll (a surge starts the new set before the old
# one leaves; a rolling pool has one replica out at a time).
# The bound is the control machine's (one SSH connection, thread and gzip upload stream per
# host) and the damage a release that passed the canary can still do: at most this many hosts
# fail and revert at once.
DEFAULT_PARALLEL = 5


def roll_options(canary: int, parallel: int, sequential: bool) -> tuple[int, int]:
    """--canary, --parallel and --sequential as `roll`'s (canary, parallel)."""
    if canary < 1:
        raise UsageError(f"--canary must be at least 1 (got {canary}): the first host always "
                         "rolls alone first")
    if parallel < 1:
        raise UsageError(f"--parallel must be at least 1 (got {parallel})")
    return (1, 1) if sequential else (canary, parallel)


def canary_stage(count: int, canary: int, parallel: int) -> range:
    """The indexes of the hosts that roll first and must prove themselves. None when hosts
    go one at a time: each already waits for the one before it to finish."""
    return range(0) if parallel <= 1 else range(min(max(1, canary), count))


def first_hosts(hosts: tuple[Host, ...], canary: int, parallel: int) -> tuple[Host, ...]:
    """The hosts a rollout in this order reaches first: its canary stage, or the first host
    when hosts go one at a time."""
    stage = canary_stage(len(hosts), canary, parallel)
    return tuple(hosts[i] for i in stage) if stage else hosts[:1]
