"""Deploy and rollback on one host: lock, upload, shared links, before_activate, activate,
health-gated rolling restart, and revert of this host by itself when a replica fails its
gate (ARCHITECTURE.md, "Deploy"). Each function returns what it did; a failure raises
PoolFailed, which carries the record of what every pool of the host did so far.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

from fpm_fleet.core.errors import FleetError, RemoteError, RolloutError
from fpm_fleet.core.events import Event, Observer, step
from fpm_fleet.core.inventory import SURGE, Host
from fpm_fleet.core.redact import redact
from fpm_fleet.core.selection import Selection
from fpm_fleet.host import fpm, lock
from fpm_fleet.host.pool import HostPool
from fpm_fleet.releases import commands as release_shell
from fpm_fleet.releases import manifest, origin
from fpm_fleet.releases import store as release
from fpm_fleet.releases.manifest import Manifest
from fpm_fleet.releases.origin import Origin
from fpm_fleet.remote import shell
from fpm_fleet.remote.command import action, together
from fpm_fleet.remote.group import HostGroup, Proven
from fpm_fleet.remote.runner import Runner
from fpm_fleet.rollout import hooks, replica, surge
from fpm_fleet.rollout.hosts import Preflight, ordered, preflight, tracked
from fpm_fleet.source import Source
from fpm_fleet.web import balancer, server


@dataclass(frozen=True)
class Plan:
    """What a deploy or rollback does on every host."""

    release: str
    command: str
    timeout: float
    kind: str = "deploy"  # or "rollback": the history records which
    source: Path | None = None
    manifest: Manifest | None = None
    force: bool = False
    origin: Origin | None = None  # the git commit it was made from (deploy --ref)


@dataclass(frozen=True)
class PoolOutcome:
    """What a deploy or rollback did to one pool of one host."""

    host: str
    pool: str
    before: str | None = None
    after: str | None = None
    passed_point_of_no_return: bool = False
    upload: release.Upload | None = None
    reverted: bool = False
    after_activate: hooks.HookOutcome | None = None


class PoolFailed(RolloutError):
    """A pool's deploy or rollback failed: the cause's message and exit code, with the
    record of every pool of the host so far (the recap shows them)."""

    def __init__(self, cause: FleetError, outcomes: tuple[PoolOutcome, ...]) -> None:
        super().__init__(str(cause))
        self.exit_code = cause.exit_code
        self.outcomes = outcomes


def roll_to(at: HostPool, target: str, obs: Observer, timeout: float) -> list[str]:
    """Restart every replica not already pinned to `target`, each health-gated. One already
    on `target` but out of rotation (its gate failed before) is gated and put back."""
    procs = at.ask(fpm.probe(at))
    bal = server.read(at)
    done = []
    for r in ordered(at, list(at.pool.replica_numbers)):
        proc = procs[r.n]
        running = proc.runs_master(at.layout)
        current = running and proc.release == target and not proc.release_deleted
        answers = current and r.ask(fpm.ping(r))
        if answers and not balancer.member_of(bal, r).out:
            obs.event(Event("info", at.host.name, "restart", r.name, f"already on {target}"))
            continue
        with tracked(r, obs):
            if running and not answers:
                replica.restart(r, target, obs, timeout)
            else:
                replica.start(r, target, obs)  # a running service: gate and enable
        done.append(r.name)
    return done


def _under_lock(at: HostPool, plan: Plan, obs: Observer,
                body: Callable[[PoolOutcome, Preflight], PoolOutcome]) -> PoolOutcome:
    """Lock the pool, run the preflight (which reads the current release), then `body`; any
    failure becomes a PoolFailed carrying the pool's record so far."""
    record = PoolOutcome(at.host.name, at.pool.name)
    try:
        with ExitStack() as held:
            pf = _lock(at, plan, obs, held)
            return body(replace(record, before=pf.current), pf)
    except PoolFailed:
        raise
    except FleetError as exc:
        raise PoolFailed(exc, (record,)) from None


def converge(at: HostPool, target: str, obs: Observer, timeout: float,
             proven: Callable[[], None] | None = None,
             seen: surge.Reading | None = None) -> list[str]:
    """Every serving replica of the pool on `target`, by the pool's strategy (`seen`: the
    balancer and replicas as the preflight read them, see surge_to)."""
    if at.pool.strategy == SURGE:
        return surge.surge_to(at, target, obs, timeout, proven, seen=seen)
    done = roll_to(at, target, obs, timeout)
    if proven is not None:
        proven()
    return done


def deploy_pool(at: HostPool, plan: Plan, obs: Observer,
                proven: Callable[[], None] | None = None) -> PoolOutcome:
    def body(record: PoolOutcome, pf: Preflight) -> PoolOutcome:
        record = replace(record, upload=_upload(at, plan, record.before, obs))
        if plan.origin is not None:
            at.ask(action(origin.record(at.layout, plan.release, plan.origin),
                          f"record the commit of {plan.release}"))
        try:
            if record.upload is not None and record.upload.prepared:
                obs.event(Event("info", at.host.name, "shared links", at.pool.name,
                                f"{plan.release} already prepared (shared links, hooks)"))
            else:
                _prepare(at, plan, obs)
        except FleetError as exc:
            raise PoolFailed(exc, (record,)) from None
        record = _activate_and_roll(at, plan, record, obs, proven, pf.reading())
        _cleanup_after(at, plan, pf, obs)
        return record

    return _under_lock(at, plan, obs, body)


def _prepare(at: HostPool, plan: Plan, obs: Observer) -> None:
    """Shared links, then the before_activate hooks, then the seal that lets a later deploy
    of the same name reuse the release only while it stays exactly as prepared."""
    host, pool, layout = at.host, at.pool, at.layout
    links = release_shell.link_shared(layout, plan.release, pool.shared)
    seal = release_shell.seal(layout, plan.release)
    with step(obs, host.name, "shared links", pool.name) as s:
        s.detail = ", ".join(pool.shared) or "none"
        if not pool.before_activate:  # nothing runs in between: sealed in the same trip
            at.ask(action(shell.then(links, seal), f"link shared, seal {plan.release}"))
            return
        at.ask(action(links, "link shared"))
    # hooks may rewrite files in place: none may share an inode with another release
    at.ask(action(release_shell.own_copies(layout, plan.release), "unshare hard links"))
    for command in pool.before_activate:
        with step(obs, host.name, "before_activate", pool.name) as s:
            s.detail = redact(command)
            _before_activate(at, plan.release, command)
    at.ask(action(seal, f"seal {plan.release}"))


def _lock(at: HostPool, plan: Plan, obs: Observer, held: ExitStack) -> Preflight:
    """Take the deploy lock (a stale one of a killed run is taken over), then the preflight:
    put back replicas a killed run left out, and fail here if balancer-manager is unusable.
    Returns what the preflight read under the lock (the current release among it)."""
    with step(obs, at.host.name, "lock", at.pool.name):
        held.enter_context(lock.locked(at, plan.command,
                                       *lock.reporters(obs, at.host.name, at.pool.name)))
    with step(obs, at.host.name, "preflight", at.pool.name):
        return preflight(at, obs)


def _upload(at: HostPool, plan: Plan, before: str | None, obs: Observer) -> release.Upload:
    assert plan.source is not None and plan.manifest is not None
    with step(obs, at.host.name, "upload", at.pool.name) as s:
        up = release.upload(at, plan.source, plan.manifest, plan.release, base=before,
                            force=plan.force,
                            in_use=_in_use(at, before) if plan.force else frozenset())
        s.detail = ("already present, identical" if up.reused else
                    f"{up.sent_files} sent, {up.linked_files} linked, "
                    f"{up.bytes_sent / 1024:.0f} KiB, verified")
    return up


def _in_use(at: HostPool, current: str | None) -> frozenset[str]:
    """The current release and every release a live master pins: never replaced."""
    return frozenset(n for n in (current, *fpm.pinned_releases(at.ask(fpm.probe(at)))) if n)


def _before_activate(at: HostPool, name: str, command: str) -> None:
    shown = redact(command)  # never a secret on the terminal
    try:
        at.ask(action(release_shell.before_activate(at.layout, name, command),
                      f"before_activate {shown}",
                      shown=release_shell.before_activate(at.layout, name, shown)))
    except RemoteError as exc:
        raise RolloutError(f"{at.host.name}: before_activate `{shown}` failed; {name} was not "
                           f"activated: {exc}") from None


def _activate_and_roll(at: HostPool, plan: Plan, record: PoolOutcome, obs: Observer,
                       proven: Callable[[], None] | None = None,
                       seen: surge.Reading | None = None) -> PoolOutcome:
    before = record.before
    if before != plan.release:
        with step(obs, at.host.name, "activate", at.pool.name) as s:
            release.activate(at, plan.release, plan.command, plan.kind)
            s.detail = f"{before or '-'} -> {plan.release}"
    record = replace(record, passed_point_of_no_return=True, after=plan.release)
    try:
        converge(at, plan.release, obs, plan.timeout, proven, seen)
    except RolloutError as exc:
        if not before or before == plan.release:
            raise PoolFailed(exc, (record,)) from None
        serving = revert(at, plan, before, obs)
        # only once every replica serves `before` again (else the hooks would run early)
        hook = hooks.after_activate(at, before, obs) if serving == at.pool.replicas else None
        record = replace(record, after=before, reverted=True, after_activate=hook)
        message = f"{exc}; {reverted(at, before, plan.release, serving)}"
        if hook and hook.failed:
            message += f"; after_activate {hook.failed}"
        raise PoolFailed(RolloutError(message), (record,)) from None
    return replace(record, after_activate=hooks.after_activate(at, plan.release, obs))


def revert(at: HostPool, plan: Plan, previous: str, obs: Observer) -> int:
    """This host goes back to the release it ran before; the failed release is marked bad.
    Returns how many of the pool's replicas are in rotation afterwards (read back, since
    the message to the operator says so)."""
    with step(obs, at.host.name, "revert", at.pool.name) as s:
        release.activate(at, previous, f"revert of {plan.command}", "revert")
        release.mark_bad(at, plan.release)
        s.detail = f"{plan.release} -> {previous}, {plan.release} marked bad"
    converge(at, previous, obs, plan.timeout)
    bal = server.read(at)
    return sum(balancer.member_of(bal, r).enabled for r in at.replicas())


def reverted(at: HostPool, previous: str, failed: str, serving: int) -> str:
    """What an automatic revert left behind, for the operator's last line."""
    host, pool = at.host, at.pool
    if serving == pool.replicas:
        return (f"reverted: {host.name} is back on {previous} and in rotation ({serving} of "
                f"{pool.replicas} {pool.name} replicas serving); {failed} is marked bad")
    return (f"reverted to {previous}, but only {serving} of {pool.replicas} {pool.name} "
            f"replicas on {host.name} are in rotation: see `fab status --host {host.name}`; "
            f"{failed} is marked bad")


def rollback_pool(at: HostPool, plan: Plan, obs: Observer,
                  proven: Callable[[], None] | None = None) -> PoolOutcome:
    return _under_lock(at, plan, obs, lambda record, pf: _activate_and_roll(
        at, plan, record, obs, proven, pf.reading()))


def rollback_target(at: HostPool, to: str | None) -> str:
    """--to NAME, or the newest earlier release that is present and not marked bad (what
    decides it is read in one round trip)."""
    listed: list[release.ReleaseInfo]
    current: str | None
    bad: set[str]
    hist: list[release.Activation]
    listed, current, bad, hist = at.ask(together(
        f"read {at.pool.name} releases, current, bad and history",
        [release.releases_read(at, sizes=False), fpm.current_release(at), release.bad_read(at),
         release.history_read(at)]))
    present = {r.name for r in listed}
    if to:
        if to not in present:
            raise FleetError(f"{at.host.name}: release {to} of pool {at.pool.name} is not on "
                             f"this host (present: {', '.join(sorted(present)) or 'none'})")
        return to
    for act in reversed(hist):
        for name in (act.previous, act.release):
            if name and name != current and name not in bad and name in present:
                return name
    raise FleetError(f"{at.host.name}: pool {at.pool.name} has no earlier good release to "
                     "roll back to")


def cleanup_pool(at: HostPool, obs: Observer) -> list[str]:
    """Keep the newest `keep_releases`; never current, previous or a pinned release (what
    decides it is read in one round trip)."""
    current, hist, procs, present = at.ask(together(
        f"read {at.pool.name} releases, history and pins",
        [fpm.current_release(at), release.history_read(at), fpm.probe(at),
         release.releases_read(at, sizes=False)]))
    previous = release.previous_of(current, hist)
    protected = {n for n in (current, previous, *fpm.pinned_releases(procs)) if n}
    return _remove(at, release.cleanup_candidates(present, at.host.keep_releases, protected),
                   obs)


def _cleanup_after(at: HostPool, plan: Plan, pf: Preflight, obs: Observer) -> list[str]:
    """The cleanup after a deploy, decided from what its preflight read under the lock: it
    reads nothing itself, being on every deploy's path. The release already serves, so a
    failure here is said, not raised: `fab cleanup` can finish it."""
    doomed = superseded(pf, plan.release, at.host.keep_releases)
    try:
        return _remove(at, doomed, obs)
    except FleetError as exc:
        obs.event(Event("warn", at.host.name, "cleanup", at.pool.name,
                        f"{exc}; {plan.release} serves; `fab cleanup` removes the rest"))
        return []


def superseded(pf: Preflight, deployed: str, keep: int) -> list[str]:
    """The releases beyond the newest `keep` once `deployed` serves (pure): it is now current
    and the newest, the release the preflight found current is now previous, and a release
    a master ran then is kept too (a parked set the surge replaced is so kept one deploy
    longer than needed, never shorter)."""
    present = pf.releases
    if all(r.name != deployed for r in present):
        present = [*present, release.ReleaseInfo(deployed, float("inf"), 0)]
    protected = {n for n in (deployed, pf.current, *fpm.pinned_releases(pf.procs)) if n}
    return release.cleanup_candidates(present, keep, protected)


def _remove(at: HostPool, doomed: list[str], obs: Observer) -> list[str]:
    if doomed:
        with step(obs, at.host.name, "cleanup", at.pool.name) as s:
            release.remove(at, doomed)
            s.detail = f"removed {', '.join(doomed)}"
    return doomed


def each_pool(runner: Runner, host: Host, sel: Selection, plans: dict[str, Plan],
              obs: Observer, rollback: bool = False,
              proven: Proven | None = None) -> list[PoolOutcome]:
    """Deploy (or roll back) every selected pool on one host, each with its own plan (a
    deploy cleans up old releases under its lock). `proven` is said once the last pool
    serves its new release (a canary stage waits for it)."""
    done: list[PoolOutcome] = []
    for i, pool in enumerate(sel.pools):
        at = HostPool(runner, host, pool)
        last = proven if i == len(sel.pools) - 1 else None
        try:
            if rollback:
                done.append(rollback_pool(at, plans[pool.name], obs, last))
            else:
                done.append(deploy_pool(at, plans[pool.name], obs, last))
        except PoolFailed as exc:
            raise PoolFailed(exc, (*done, *exc.outcomes)) from None
    return done


def deploy_plans(sel: Selection, sources: dict[str, Source], force: bool, timeout: float,
                 command: str) -> dict[str, Plan]:
    """Per pool: the release, its scanned content (refused when it is hostile) and how."""
    plans = {}
    for pool_name, src in sources.items():
        scanned = manifest.scan(src.path)
        manifest.check_shared(scanned, sel.pool(pool_name).shared, pool_name)
        plans[pool_name] = Plan(release=src.release, command=command, timeout=timeout,
                                source=src.path, manifest=scanned, force=force,
                                origin=src.origin)
    return plans


def rollback_targets(sel: Selection, to: str | None, obs: Observer,
                     connector: Callable[[Host], Runner] | None = None,
                     ) -> dict[tuple[str, str], str]:
    """Checked on every host before anything changes: a missing target refuses the rollback.
    `connector`: the task's kept connections, which the rollout then reuses."""
    def work(runner: Runner, h: Host) -> dict[str, str]:
        return {p.name: rollback_target(HostPool(runner, h, p), to) for p in sel.pools}

    results = HostGroup(obs, parallel=8, stop_on_failure=False,
                        connector=connector).run(sel.hosts, work)
    if not results.ok:
        raise FleetError("rollback refused, nothing changed: "
                         + "; ".join(str(o.error) for o in results.failed))
    return {(host, pool): name for host, names in results.values().items()
            for pool, name in names.items()}


@dataclass(frozen=True)
class ReleaseRow:
    """One release of a pool on a host, as `fab releases` lists it."""

    host: str
    pool: str
    info: release.ReleaseInfo
    current: bool
    previous: bool
    bad: bool
    pinned_by: tuple[str, ...]
    origin: Origin | None = None  # made by deploy --ref: its commit


def listing(at: HostPool) -> list[ReleaseRow]:
    current = at.ask(fpm.current_release(at))
    previous = release.previous_of(current, release.history(at))
    bad = release.bad_releases(at)
    pinned: dict[str, list[str]] = {}
    bal = server.read(at)
    procs = at.ask(fpm.probe(at))
    for r in at.replicas():
        proc = procs[r.n]
        if proc.alive and proc.release:
            parked = "Stby" in balancer.member_of(bal, r).flags
            pinned.setdefault(proc.release, []).append(r.name + (" (parked)" if parked else ""))
    origins = at.ask(origin.read_all(at.layout))
    return [ReleaseRow(at.host.name, at.pool.name, r, r.name == current, r.name == previous,
                       r.name in bad, tuple(pinned.get(r.name, [])), origins.get(r.name))
            for r in release.list_releases(at)]
