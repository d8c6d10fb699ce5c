"""Handles for "this pool on this host" and "this replica": what every host operation is
given instead of (runner, host, pool, n).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import PurePosixPath
from typing import TypeVar

from fpm_fleet.core.inventory import Host, Pool
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.runner import Runner

T = TypeVar("T")


@dataclass(frozen=True)
class HostPool:
    """One pool on one host, with the runner that reaches the host."""

    runner: Runner
    host: Host
    pool: Pool

    @cached_property
    def layout(self) -> Layout:
        return Layout.of(self.host, self.pool)

    @property
    def label(self) -> str:
        return f"{self.host.name}/{self.pool.name}"

    @property
    def manager_url(self) -> str:
        return self.host.manager_url(self.pool)

    def replica(self, n: int) -> Replica:
        return Replica(self, n)

    def replicas(self, numbers: list[int] | None = None) -> list[Replica]:
        """The replicas numbered `numbers` (default: every replica of the pool)."""
        return [Replica(self, n) for n in (numbers or self.pool.replica_numbers)]

    def ask(self, cmd: Command[T]) -> T:
        return self.runner.ask(cmd)


@dataclass(frozen=True)
class Replica:
    """One PHP-FPM master of a pool on a host, as the operator names it: web1/www-2."""

    at: HostPool
    n: int

    @property
    def host(self) -> Host:
        return self.at.host

    @property
    def pool(self) -> Pool:
        return self.at.pool

    @property
    def name(self) -> str:
        return self.pool.replica_name(self.n)

    @property
    def label(self) -> str:
        return f"{self.host.name}/{self.name}"

    @property
    def member(self) -> str:
        """Its balancer member's identity."""
        return self.pool.member(self.n)

    @property
    def sock(self) -> PurePosixPath:
        return self.at.layout.sock(self.n)

    @property
    def unit(self) -> str:
        return self.at.layout.unit(self.n)

    def ask(self, cmd: Command[T]) -> T:
        return self.at.runner.ask(cmd)
