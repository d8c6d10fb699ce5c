"""Fleet scale: `fab sandbox.up` (and the hosts' boot within it), `fab deploy` (sequential
and --parallel N) and `fab status` wall time for fleets of 1, 3, 6 hosts, each brought up
fresh with `fab sandbox.up --hosts N`."""

from __future__ import annotations

import resource
import statistics
from collections.abc import Callable
from dataclasses import dataclass

from . import sandbox
from .machine import cpu_seconds


@dataclass(frozen=True)
class Cpu:
    """CPU seconds one command cost: the whole machine's, and of them the `fab` process's."""

    machine_s: float
    fab_s: float


@dataclass
class ScaleRow:
    hosts: int
    replicas: int
    up_s: float
    boot_s: float | None
    deploy_s: float
    deploy_parallel_s: float
    status_s: float
    base_build_s: float | None = None
    rollback_kept_s: float | None = None  # `fab rollback` to a parked set (keep_previous)
    # the machine's CPU time during the default deploy and the rollback (fab and every host
    # share its CPUs: divided by their number, a floor for the wall time here)
    deploy_parallel_cpu: Cpu | None = None
    rollback_kept_cpu: Cpu | None = None


def run(counts: tuple[int, ...], status_runs: int, say: Callable[[str], None]) -> list[ScaleRow]:
    rows = []
    for n in counts:
        say(f"scale: {n} host(s)")
        rows.append(one(n, status_runs))
    sandbox.down()
    return rows


def one(hosts: int, status_runs: int) -> ScaleRow:
    """Fresh fleet; deploy s2 one host at a time, s3 all hosts at once; time status."""
    fresh = sandbox.up(hosts)
    fleet = fresh.fleet
    sandbox.fab("sandbox.build", "--release", "s2")
    sequential = sandbox.fab("deploy", "--release", "s2", "--sequential", "--plain")
    status = [sandbox.fab("status").seconds for _ in range(status_runs)]
    sandbox.fab("sandbox.build", "--release", "s3")
    parallel, parallel_cpu = with_cpu("deploy", "--release", "s3", "--parallel", str(hosts),
                                      "--plain")
    sandbox.fab("status")
    replicas = sum(p.replicas for p in fleet.pools) * len(fleet.hosts)
    rollback, rollback_cpu = rollback_kept()
    return ScaleRow(hosts, replicas, round(fresh.seconds, 2), fresh.boot_s,
                    round(sequential.seconds, 2),
                    round(parallel.seconds, 2), round(statistics.median(status), 2),
                    fresh.base_build_s, round(rollback.seconds, 2), parallel_cpu, rollback_cpu)


def with_cpu(*args: str) -> tuple[sandbox.Run, Cpu]:
    """`fab ARGS`, and the CPU seconds it cost: the machine's while it ran, and fab's own
    (this process's children are the fab commands it waited for)."""
    before, fab_before = cpu_seconds(), _children_cpu()
    run = sandbox.fab(*args)
    return run, Cpu(round(cpu_seconds() - before, 2), round(_children_cpu() - fab_before, 2))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rollback_kept() -> tuple[sandbox.Run, Cpu]:
    """With keep_previous: deploy s4 (s3's set parks), then time the rollback to s3, a flip
    of balancer flags on every host."""
    sandbox.keep_previous(True)
    try:
        sandbox.fab("sandbox.build", "--release", "s4")
        sandbox.fab("deploy", "--release", "s4", "--plain")
        return with_cpu("rollback", "--plain")
    finally:
        sandbox.keep_previous(False)
