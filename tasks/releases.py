"""Tasks for releases: deploy, rollback, releases, cleanup, unlock."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

from invoke.context import Context
from invoke.tasks import task

from fpm_fleet import output
from fpm_fleet.errors import ConfigError, FleetError, UsageError
from fpm_fleet.events import Observer
from fpm_fleet.host import fpm, lock
from fpm_fleet.inventory import Host, Pool
from fpm_fleet.releases import manifest
from fpm_fleet.releases import store as release_ops
from fpm_fleet.remote.ssh import Executor
from fpm_fleet.rollout import deploy
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout.deploy import Plan, PoolOutcome
from fpm_fleet.rollout.hosts import HostResult, Runner, Selection
from tasks.boundary import Session, boundary, command_line
from tasks.fleet import reporting_interrupts

COMMON_HELP = {
    "host": "host name, or a comma list (default: every host)",
    "pool": "one pool (default: every pool)",
    "parallel": "hosts done at the same time (default 1); at most one replica per pool "
                "and host is ever out of rotation",
    "timeout": "seconds to wait for a replica to become idle / exit",
    "dry_run": "print the plan (steps and remote commands per host) and change nothing",
    "plain": "plain lines instead of the live display",
}


def _sources(sel: Selection, source: str | None) -> dict[str, Path]:
    if source and len(sel.pools) > 1:
        raise UsageError("--source applies to one pool: add --pool NAME")
    out = {}
    for pool in sel.pools:
        path = Path(source or pool.source)
        if not path.is_dir():
            raise ConfigError(f"source directory {path} of pool {pool.name} does not exist")
        out[pool.name] = path
    return out


def _plans(sel: Selection, name: str, source: str | None, force: bool, timeout: float,
           command: str) -> dict[str, Plan]:
    plans = {}
    sources = _sources(sel, source)
    for pool in sel.pools:
        pool_name, path = pool.name, sources[pool.name]
        scanned = manifest.scan(path)
        manifest.check_shared(scanned, pool.shared, pool_name)
        plans[pool_name] = Plan(release=name, command=command, timeout=timeout, source=path,
                                manifest=scanned, force=force)
    return plans


@task(name="deploy", help={**COMMON_HELP, "release": "the release name (letters, digits, . _ -)",
            "source": "directory to upload (default: the pool's `source`)",
            "force": "replace an existing release of that name whose content differs"})
def deploy_(c: Context, release: str = "", source: str | None = None, host: str | None = None,
            pool: str | None = None, parallel: int = 1, force: bool = False,
            dry_run: bool = False, timeout: float = 60, plain: bool = False) -> None:
    """Upload a release to every host, activate it, health-gated rolling restart, auto-revert."""
    with boundary(c, command_line()) as s:
        if not release:
            raise UsageError("deploy needs --release NAME: the name of the new release "
                             "(letters, digits, '.', '_' and '-'), e.g. --release v42")
        name = release_ops.validate_name(release)
        sel = rollout.select(s.fleet, host, pool)
        plans = _plans(sel, name, source, force, timeout, command_line())
        if dry_run:
            _print_dry_run(sel, plans)
            return
        _run_rollout(s, sel, "deploy", parallel, plain,
                     lambda ex, h, obs, res, outs: deploy.deploy_host(ex, h, sel, plans, obs,
                                                                      res, outs))



PoolWork = Callable[[Executor, Host, Observer, HostResult, list[PoolOutcome]], None]


def _run_rollout(s: Session, sel: Selection, title: str, parallel: int, plain: bool,
                 body: PoolWork) -> None:
    outcomes: list[PoolOutcome] = []
    with reporting_interrupts(sel), output.progress(plain) as obs:
        runner = Runner(obs, parallel=max(1, parallel))
        results = runner.run(sel.hosts,
                             lambda ex, h, r: body(ex, h, obs, r, outcomes))
    _recap(title, sel, results, outcomes)
    rollout.stopped(title, results)


def _recap(title: str, sel: Selection, results: list[HostResult],
           outcomes: list[PoolOutcome]) -> None:
    by_host = {r.host: r for r in results}
    rows: list[list[object]] = []
    for h in sel.hosts:
        res = by_host.get(h.name)
        mine = [o for o in outcomes if o.host == h.name]
        if res is None or not res.reached:
            rows.append([h.name, "-", "-", "-", "not reached (untouched)", "-", "no", ""])
            continue
        for o in mine or [PoolOutcome(h.name, "-")]:
            up = o.upload
            upload = ("-" if up is None else "reused" if up.reused else
                      f"{up.sent_files} sent/{up.linked_files} linked, "
                      f"{up.bytes_sent / 1024:.0f} KiB in {up.seconds:.1f}s")
            result = ("reverted" if o.reverted else "ok" if res.ok else "FAILED")
            rows.append([h.name, o.pool, f"{o.before or '-'} -> {o.after or o.before or '-'}",
                         f"{res.seconds:.1f}s", output.ok_text(res.ok, result, result), upload,
                         "yes" if o.passed_point_of_no_return else "no", res.error])
    output.show(output.table(title, ["host", "pool", "release", "duration", "result",
                                     "upload", "point of no return", "error"], rows))


def _print_dry_run(sel: Selection, plans: dict[str, Plan]) -> None:
    for h in sel.hosts:
        for p in sel.pools:
            plan = plans[p.name]
            _print_plan(f"{h.name} ({h.address}) pool {p.name}: deploy {plan.release} "
                        f"from {plan.source}",
                        deploy.dry_run_commands(h, p, plan, "<current>"))
    output.note("dry run: nothing was changed", "bold yellow")


def _print_plan(heading: str, commands: deploy.Commands) -> None:
    output.out.print(f"# {heading}", markup=False)
    for label, cmd in commands:
        output.out.print(f"  [{label}] {cmd}", markup=False)


@task(help={**COMMON_HELP, "to": "release to go back to (default: the previous good one)"})
def rollback(c: Context, to: str | None = None, host: str | None = None,
             pool: str | None = None, parallel: int = 1, dry_run: bool = False,
             timeout: float = 60, plain: bool = False) -> None:
    """Go back to the previous good release (or --to NAME), the same health-gated way."""
    with boundary(c, command_line()) as s:
        if to:
            release_ops.validate_name(to)
        sel = rollout.select(s.fleet, host, pool)
        targets = _rollback_targets(sel, to)
        if dry_run:
            _print_rollback_dry_run(sel, targets, timeout)
            return
        command = command_line()
        _run_rollout(s, sel, "rollback", parallel, plain,
                     lambda ex, h, obs, res, outs: _rollback_host(ex, h, sel, targets, command,
                                                                  timeout, obs, res, outs))


def _print_rollback_dry_run(sel: Selection, targets: dict[tuple[str, str], str],
                            timeout: float) -> None:
    for h in sel.hosts:
        for p in sel.pools:
            plan = Plan(release=targets[(h.name, p.name)], command="", timeout=timeout)
            _print_plan(f"{h.name} ({h.address}) pool {p.name}: roll back to {plan.release}",
                        deploy.dry_run_rollback_commands(h, p, plan))
    output.note("dry run: nothing was changed", "bold yellow")


def _rollback_targets(sel: Selection, to: str | None) -> dict[tuple[str, str], str]:
    """Checked on every host before anything changes: a missing target refuses the rollback."""
    targets: dict[tuple[str, str], str] = {}

    def work(ex: Executor, h: Host, result: HostResult) -> None:
        for p in sel.pools:
            targets[(h.name, p.name)] = deploy.rollback_target(ex, h, p, to)

    results = Runner(output.PlainObserver(), parallel=8, stop_on_failure=False).run(
        sel.hosts, work)
    failed = [r.error for r in results if not r.ok]
    if failed:
        raise FleetError("rollback refused, nothing changed: " + "; ".join(failed))
    return targets


def _rollback_host(ex: Executor, host: Host, sel: Selection,
                   targets: dict[tuple[str, str], str], command: str, timeout: float,
                   obs: Observer, result: HostResult, outcomes: list[PoolOutcome]
                   ) -> None:
    for pool in sel.pools:
        outcome = PoolOutcome(host.name, pool.name)
        outcomes.append(outcome)
        plan = Plan(release=targets[(host.name, pool.name)], command=command, timeout=timeout)
        deploy.rollback_pool(ex, host, pool, plan, obs, result, outcome)


@task(help={"host": COMMON_HELP["host"], "pool": COMMON_HELP["pool"]})
def releases(c: Context, host: str | None = None, pool: str | None = None) -> None:
    """Per host: releases with creation time, size, current, previous, bad, pinned."""
    with boundary(c, command_line()) as s:
        sel = rollout.select(s.fleet, host, pool)
        rows: list[list[object]] = []

        def work(ex: Executor, h: Host, result: HostResult) -> None:
            for p in sel.pools:
                rows.extend(_release_rows(ex, h, p))

        results = Runner(output.PlainObserver(), parallel=8, stop_on_failure=False).run(
            sel.hosts, work)
        rows += [[r.host, "-", "unreachable", "-", "-", "", "", "", "", r.error]
                 for r in results if not r.ok]
        output.show(output.table("releases", ["host", "pool", "release", "created", "size",
                                              "current", "previous", "bad", "pinned by",
                                              "note"], rows))


def _release_rows(ex: Executor, h: Host, p: Pool) -> list[list[object]]:
    current = fpm.current_release(ex, h, p)
    previous = release_ops.previous_of(current, release_ops.history(ex, h, p))
    bad = release_ops.bad_releases(ex, h, p)
    pinned: dict[str, list[str]] = {}
    for n, proc in fpm.probe(ex, h, p).items():
        if proc.alive and proc.release:
            pinned.setdefault(proc.release, []).append(f"{p.name}-{n}")
    out: list[list[object]] = []
    for r in release_ops.list_releases(ex, h, p):
        created = datetime.datetime.fromtimestamp(r.created).strftime("%Y-%m-%d %H:%M:%S")
        out.append([h.name, p.name, r.name, created, f"{r.size_kib / 1024:.1f} MiB",
                    "yes" if r.name == current else "", "yes" if r.name == previous else "",
                    "BAD" if r.name in bad else "", ", ".join(pinned.get(r.name, [])), ""])
    return out


@task(help={"host": COMMON_HELP["host"], "pool": COMMON_HELP["pool"]})
def cleanup(c: Context, host: str | None = None, pool: str | None = None) -> None:
    """Remove old releases beyond keep_releases (never current, previous or pinned)."""
    with boundary(c, command_line()) as s:
        sel = rollout.select(s.fleet, host, pool)
        with output.progress(plain=True) as obs:
            def work(ex: Executor, h: Host, result: HostResult) -> None:
                for p in sel.pools:
                    with lock.locked(ex, h, p, command_line(),
                                     *lock.reporters(obs, h.name, p.name)):
                        removed = deploy.cleanup_pool(ex, h, p, obs)
                    result.notes.append(f"{p.name}: removed {', '.join(removed) or 'nothing'}")

            results = Runner(obs, stop_on_failure=False).run(sel.hosts, work)
        for r in results:
            output.note(f"{r.host}: " + ("; ".join(r.notes) if r.ok else r.error))
        if not all(r.ok for r in results):
            raise FleetError("cleanup failed on some hosts")


@task(help={"host": COMMON_HELP["host"], "pool": COMMON_HELP["pool"]})
def unlock(c: Context, host: str | None = None, pool: str | None = None) -> None:
    """Force-remove the deploy lock (after a crashed deploy); prints who held it."""
    with boundary(c, command_line()) as s:
        sel = rollout.select(s.fleet, host, pool)

        def work(ex: Executor, h: Host, result: HostResult) -> None:
            for p in sel.pools:
                result.notes.append(f"{p.name}: {lock.unlock(ex, h, p)}")

        for r in Runner(output.PlainObserver(), stop_on_failure=False).run(sel.hosts, work):
            output.note(f"{r.host}: " + ("; ".join(r.notes) if r.ok else r.error))

