"""Tasks for releases: deploy, rollback, releases, cleanup, unlock.

The rollout machinery is imported in the task bodies, once the first hosts are connecting
(tasks/boundary.py: start-up is on the path of every deploy)."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.tasks import task

from fpm_fleet.core.errors import FleetError
from fpm_fleet.core.inventory import Fleet, Host
from fpm_fleet.core.selection import (
    DEFAULT_PARALLEL,
    Selection,
    first_hosts,
    roll_options,
    select,
    validate_name,
)
from tasks.boundary import FirstHosts, Session, boundary, command_line
from tasks.fleet import ORDER_HELP, reporting_interrupts

if TYPE_CHECKING:
    from fpm_fleet.core.events import Observer
    from fpm_fleet.remote.group import Proven
    from fpm_fleet.remote.runner import Runner
    from fpm_fleet.rollout.deploy import PoolOutcome

    PoolWork = Callable[[Runner, Host, Observer, Proven | None], list[PoolOutcome]]

COMMON_HELP = {
    **ORDER_HELP,
    "host": "host name, or a comma list (default: every host)",
    "pool": "one pool (default: every pool)",
    "timeout": "seconds to wait for a replica to become idle / exit",
    "dry_run": "run the real steps against the hosts' real state, but change nothing: print "
               "every command that would run, as the user it would run as",
    "plain": "plain lines instead of the live display",
}


def first_of_rollout(host: str | None, pool: str | None, order: tuple[int, int, bool],
                     dry_run: bool, *releases: str | None) -> FirstHosts:
    """A rollout's first hosts (its canary stage), once its options are known to be valid:
    a rollout refused for a bad option reaches no host. A dry run connects as it goes."""
    def first(fleet: Fleet) -> tuple[Host, ...]:
        for name in filter(None, releases):
            validate_name(name)
        canary, parallel = roll_options(*order)
        return () if dry_run else first_hosts(select(fleet, host, pool).hosts, canary, parallel)
    return first


def first_of_deploy(host: str | None, pool: str | None, order: tuple[int, int, bool],
                    dry_run: bool, release: str, ref: str | None, source: str | None
                    ) -> FirstHosts:
    """A deploy's first hosts once its options are valid (`check_request`, the source
    directories exist), when it has nothing long to do here first: a git export or a
    pool's build runs before any host is reached (either may take minutes, and fail). The
    canary's login then overlaps the content scan too: a release refused for its content
    has at most logged in to the canary host and run `true` there."""
    def first(fleet: Fleet) -> tuple[Host, ...]:
        from fpm_fleet import source as source_mod  # the request's own checks (10 ms)

        pools = select(fleet, host, pool).pools
        source_mod.check_request(pools, source_mod.Request(release, ref, source))
        if ref is not None or any(p.build for p in pools):
            return ()
        source_mod.directories(pools, source)
        return first_of_rollout(host, pool, order, dry_run, release)(fleet)
    return first


@task(name="deploy", help={**COMMON_HELP,
            "release": "the release name (letters, digits, . _ -); with --ref, default: the "
                       "UTC time and the short commit id",
            "source": "directory to upload (default: the pool's `source`)",
            "ref": "deploy this branch, tag or commit of the pool's `repository`, exported "
                   "on this machine",
            "force": "replace an existing release of that name whose content differs"})
def deploy_(c: Context, release: str = "", source: str | None = None, ref: str | None = None,
            host: str | None = None, pool: str | None = None, canary: int = 1,
            parallel: int = DEFAULT_PARALLEL, sequential: bool = False, force: bool = False,
            dry_run: bool = False, timeout: float = 60, plain: bool = False) -> None:
    """Upload a release to every host, activate it, health-gated rolling restart, auto-revert.
    The release is a directory, or a git revision (--ref); the pool's `build` runs first."""
    first = first_of_deploy(host, pool, (canary, parallel, sequential), dry_run, release, ref,
                            source)
    with boundary(c, command_line(), first) as s:
        from fpm_fleet import output
        from fpm_fleet import source as source_mod
        from fpm_fleet.rollout import deploy

        order = roll_options(canary, parallel, sequential)
        if release:
            validate_name(release)
        sel = select(s.fleet, host, pool)
        request = source_mod.Request(release, ref, source)
        # export and build before any host is touched; the scratch copies go at the end
        with source_mod.prepared(sel.pools, request, output.PlainObserver()) as made:
            plans = deploy.deploy_plans(sel, made, force, timeout, command_line())
            _run_rollout(s, sel, "deploy", order, plain, dry_run,
                         lambda runner, h, obs, proven: deploy.each_pool(
                             runner, h, sel, plans, obs, proven=proven),
                         _same({p.release for p in plans.values()}))


def _same(names: set[str]) -> str | None:
    """The one release every pool goes to (None when they differ), for the webhooks."""
    return next(iter(names)) if len(names) == 1 else None


def _run_rollout(s: Session, sel: Selection, title: str, order: tuple[int, int], plain: bool,
                 dry_run: bool, body: PoolWork, release: str | None = None,
                 connector: Callable[[Host], Runner] | None = None) -> None:
    """The canary stage, then the rest `parallel` at a time (ARCHITECTURE.md, Deploy);
    webhooks told of it, never waited on beyond their timeout."""
    from fpm_fleet import output, report
    from fpm_fleet.notify import Notifier
    from fpm_fleet.remote.group import HostGroup

    if dry_run:
        _dry_run(sel, title, body)
        return
    canary, parallel = order
    notes = Notifier(s.fleet.notify, title, release)
    notes.start(sel.hosts, s.fleet.path)
    results = None
    try:
        with reporting_interrupts(sel), output.progress(plain) as obs:
            results = HostGroup(obs, connector=connector, early=s.early).roll(
                sel.hosts, notes.per_host(lambda runner, h, proven: body(runner, h, obs, proven)),
                canary=canary, parallel=parallel)
        report.rollout_recap(title, results)
    finally:
        notes.finish(results)
        report.notifications(notes.close())
    results.raise_first_failure(title)
    report.after_activate_failures(title, results)


def _dry_run(sel: Selection, title: str, body: PoolWork) -> None:
    """The real rollout, host after host, with a Recorder for a runner: it reads the hosts'
    state over SSH and records every command that would change them."""
    from fpm_fleet import output, report
    from fpm_fleet.remote.dryrun import Recorder, StepsInPlan
    from fpm_fleet.remote.group import HostGroup
    from fpm_fleet.remote.ssh import SSHRunner, connect

    with output.progress(plain=True) as plain:
        obs = StepsInPlan(plain)

        def connector(h: Host) -> Runner:
            obs.recorders[h.name] = Recorder(h, SSHRunner(h, connect(h)))
            return obs.recorders[h.name]

        results = HostGroup(obs, stop_on_failure=False, connector=connector).run(
            sel.hosts, lambda runner, h: body(runner, h, obs, None))
    report.plan(title, [p for r in obs.recorders.values() for p in r.plan], reads=True)
    results.raise_first_failure(f"{title} (dry run)")


@task(help={**COMMON_HELP, "to": "release to go back to (default: the previous good one)"})
def rollback(c: Context, to: str | None = None, host: str | None = None,
             pool: str | None = None, canary: int = 1, parallel: int = DEFAULT_PARALLEL,
             sequential: bool = False, dry_run: bool = False, timeout: float = 60,
             plain: bool = False) -> None:
    """Go back to the previous good release (or --to NAME), the same health-gated way."""
    def first(fleet: Fleet) -> tuple[Host, ...]:  # the targets are read on every host first
        first_of_rollout(host, pool, (canary, parallel, sequential), dry_run, to)(fleet)
        return () if dry_run else select(fleet, host, pool).hosts

    with boundary(c, command_line(), first) as s:
        from fpm_fleet import output
        from fpm_fleet.remote.group import KeptConnections
        from fpm_fleet.rollout import deploy
        from fpm_fleet.rollout.deploy import Plan

        order = roll_options(canary, parallel, sequential)
        if to:
            validate_name(to)
        sel = select(s.fleet, host, pool)
        # the targets are read, then the hosts rolled, over one connection per host
        kept = KeptConnections(output.PlainObserver(), early=s.early)
        try:
            targets = deploy.rollback_targets(sel, to, output.PlainObserver(), kept.runner)
            command = command_line()

            def plans(h: Host) -> dict[str, Plan]:
                return {p.name: Plan(release=targets[(h.name, p.name)], command=command,
                                     timeout=timeout, kind="rollback") for p in sel.pools}

            _run_rollout(s, sel, "rollback", order, plain, dry_run,
                         lambda runner, h, obs, proven: deploy.each_pool(
                             runner, h, sel, plans(h), obs, rollback=True, proven=proven),
                         _same(set(targets.values())), connector=kept.runner)
        finally:
            kept.close()


@task(help={"host": COMMON_HELP["host"], "pool": COMMON_HELP["pool"]})
def releases(c: Context, host: str | None = None, pool: str | None = None) -> None:
    """Per host: releases with creation time, size, current, previous, bad, pinned."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output
        from fpm_fleet.host.pool import HostPool
        from fpm_fleet.remote.group import HostGroup
        from fpm_fleet.rollout import deploy

        sel = select(s.fleet, host, pool)
        results = HostGroup(output.PlainObserver(), parallel=8, stop_on_failure=False).run(
            sel.hosts, lambda runner, h: [row for p in sel.pools
                                          for row in deploy.listing(HostPool(runner, h, p))])
        rows: list[list[object]] = [
            [r.host, r.pool, r.info.name,
             datetime.datetime.fromtimestamp(r.info.created).strftime("%Y-%m-%d %H:%M:%S"),
             f"{r.info.size_kib / 1024:.1f} MiB", "yes" if r.current else "",
             "yes" if r.previous else "", "BAD" if r.bad else "", ", ".join(r.pinned_by),
             r.origin.short if r.origin else "-", ""]
            for o in results for r in (o.value or [])]
        rows += [[o.host, "-", "unreachable", "-", "-", "", "", "", "", "", str(o.error)]
                 for o in results.failed]
        output.show(output.table("releases", ["host", "pool", "release", "created", "size",
                                              "current", "previous", "bad", "pinned by",
                                              "commit", "note"], rows))


@task(help={"host": COMMON_HELP["host"], "pool": COMMON_HELP["pool"]})
def cleanup(c: Context, host: str | None = None, pool: str | None = None) -> None:
    """Remove old releases beyond keep_releases (never current, previous or pinned)."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output
        from fpm_fleet.host import lock
        from fpm_fleet.host.pool import HostPool
        from fpm_fleet.remote.group import HostGroup
        from fpm_fleet.rollout import deploy

        sel = select(s.fleet, host, pool)
        with output.progress(plain=True) as obs:
            def work(runner: Runner, h: Host) -> list[str]:
                notes = []
                for p in sel.pools:
                    at = HostPool(runner, h, p)
                    with lock.locked(at, command_line(), *lock.reporters(obs, h.name, p.name)):
                        removed = deploy.cleanup_pool(at, obs)
                    notes.append(f"{p.name}: removed {', '.join(removed) or 'nothing'}")
                return notes

            results = HostGroup(obs, stop_on_failure=False).run(sel.hosts, work)
        for o in results:
            output.note(f"{o.host}: " + ("; ".join(o.value or []) if o.ok else str(o.error)))
        if not results.ok:
            raise FleetError("cleanup failed on some hosts")


@task(help={"host": COMMON_HELP["host"], "pool": COMMON_HELP["pool"]})
def unlock(c: Context, host: str | None = None, pool: str | None = None) -> None:
    """Force-remove the deploy lock (after a crashed deploy); prints who held it."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output
        from fpm_fleet.host import lock
        from fpm_fleet.host.pool import HostPool
        from fpm_fleet.remote.group import HostGroup

        sel = select(s.fleet, host, pool)
        results = HostGroup(output.PlainObserver(), stop_on_failure=False).run(
            sel.hosts, lambda runner, h: [f"{p.name}: {lock.unlock(HostPool(runner, h, p))}"
                                          for p in sel.pools])
        for o in results:
            output.note(f"{o.host}: " + ("; ".join(o.value or []) if o.ok else str(o.error)))
