"""Deploy and rollback on one host: lock, upload, shared links, before_activate, activate,
health-gated rolling restart, and revert of this host by itself when a replica fails its gate.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from fpm_fleet.errors import FleetError, RemoteError, RolloutError
from fpm_fleet.events import Event, Observer, step
from fpm_fleet.host import fpm, lock
from fpm_fleet.host.layout import Layout
from fpm_fleet.inventory import Host, Pool
from fpm_fleet.redact import redact
from fpm_fleet.releases import commands as release_shell
from fpm_fleet.releases import store as release
from fpm_fleet.releases.manifest import Manifest
from fpm_fleet.remote import shell
from fpm_fleet.remote.ssh import Executor
from fpm_fleet.rollout import replica
from fpm_fleet.rollout.hosts import HostResult, Selection, heal, ordered_replicas, tracked
from fpm_fleet.rollout.replica import Replica
from fpm_fleet.web import balancer


@dataclass(frozen=True)
class Plan:
    """What a deploy or rollback does on every host."""

    release: str
    command: str
    timeout: float
    source: Path | None = None
    manifest: Manifest | None = None
    force: bool = False


@dataclass
class PoolOutcome:
    host: str
    pool: str
    before: str | None = None
    after: str | None = None
    passed_point_of_no_return: bool = False
    upload: release.Upload | None = None
    reverted: bool = False


def roll_to(ex: Executor, host: Host, pool: Pool, target: str, obs: Observer, timeout: float,
            result: HostResult, numbers: list[int] | None = None) -> None:
    """Restart every replica not already pinned to `target`, each health-gated. One already
    on `target` but out of rotation (its gate failed before) is gated and put back."""
    procs = fpm.probe(ex, host, pool)
    bal = balancer.read(ex, host, pool)
    wanted = numbers or list(pool.replica_numbers)
    for n in ordered_replicas(ex, host, pool, wanted):
        r = Replica(host, pool, n)
        proc = procs[n]
        running = proc.runs_master(r.layout)
        current = running and proc.release == target and not proc.release_deleted
        answers = current and fpm.ping(ex, host, pool, n)
        if answers and not balancer.member_of(bal, host, pool, n).out:
            obs.event(Event("info", host.name, "restart", r.name, f"already on {target}"))
            continue
        with tracked(ex, r, obs, result):
            if running and not answers:
                replica.restart(ex, r, target, obs, timeout)
            else:
                replica.start(ex, r, target, obs)  # a running service: gate and enable


def deploy_pool(ex: Executor, host: Host, pool: Pool, plan: Plan, obs: Observer,
                result: HostResult, outcome: PoolOutcome) -> None:
    layout = Layout.of(host, pool)
    with ExitStack() as held:
        _lock(ex, host, pool, plan, obs, held)
        outcome.before = fpm.current_release(ex, host, pool)
        ex.run(release_shell.clear_incoming(layout), "clear interrupted uploads")
        _upload(ex, host, pool, plan, outcome, obs)
        if outcome.upload is not None and outcome.upload.prepared:
            obs.event(Event("info", host.name, "shared links", pool.name,
                            f"{plan.release} already prepared (shared links, hooks)"))
        else:
            _prepare(ex, host, pool, plan, obs)
        _activate_and_roll(ex, host, pool, plan, outcome, obs, result)


def _prepare(ex: Executor, host: Host, pool: Pool, plan: Plan, obs: Observer) -> None:
    """Shared links, then the before_activate hooks, then the seal that lets a later deploy
    of the same name reuse the release only while it stays exactly as prepared."""
    layout = Layout.of(host, pool)
    with step(obs, host.name, "shared links", pool.name) as s:
        ex.run(release_shell.link_shared(layout, plan.release, pool.shared), "link shared")
        s.detail = ", ".join(pool.shared) or "none"
    if pool.before_activate:
        # hooks may rewrite files in place: none may share an inode with another release
        ex.run(release_shell.own_copies(layout, plan.release), "unshare hard links")
    for command in pool.before_activate:
        with step(obs, host.name, "before_activate", pool.name) as s:
            s.detail = redact(command)
            _before_activate(ex, host, layout, plan.release, command)
    release.seal(ex, host, pool, plan.release)


def _lock(ex: Executor, host: Host, pool: Pool, plan: Plan, obs: Observer,
          held: ExitStack) -> None:
    """Take the deploy lock (a stale one of a killed run is taken over), then the preflight:
    put back replicas a killed run left out, and fail here if balancer-manager is unusable."""
    with step(obs, host.name, "lock", pool.name):
        held.enter_context(lock.locked(ex, host, pool, plan.command,
                                       *lock.reporters(obs, host.name, pool.name)))
    with step(obs, host.name, "preflight", pool.name):
        heal(ex, host, pool, obs)


def _upload(ex: Executor, host: Host, pool: Pool, plan: Plan, outcome: PoolOutcome,
            obs: Observer) -> None:
    assert plan.source is not None and plan.manifest is not None
    with step(obs, host.name, "upload", pool.name) as s:
        up = release.upload(ex, host, pool, plan.source, plan.manifest, plan.release,
                            base=outcome.before, force=plan.force,
                            in_use=_in_use(ex, host, pool, outcome.before) if plan.force
                            else frozenset())
        outcome.upload = up
        s.detail = ("already present, identical" if up.reused else
                    f"{up.sent_files} sent, {up.linked_files} linked, "
                    f"{up.bytes_sent / 1024:.0f} KiB, verified")


def _in_use(ex: Executor, host: Host, pool: Pool, current: str | None) -> frozenset[str]:
    """The current release and every release a live master pins: never replaced."""
    pinned = {p.release for p in fpm.probe(ex, host, pool).values() if p.alive and p.release}
    return frozenset(n for n in (current, *pinned) if n)


def _before_activate(ex: Executor, host: Host, layout: Layout, name: str, command: str) -> None:
    shown = redact(command)  # never a secret on the terminal
    try:
        ex.run(release_shell.before_activate(layout, name, command), f"before_activate {shown}")
    except RemoteError as exc:
        raise RolloutError(f"{host.name}: before_activate `{shown}` failed; {name} was not "
                           f"activated: {exc}") from None


def _activate_and_roll(ex: Executor, host: Host, pool: Pool, plan: Plan, outcome: PoolOutcome,
                       obs: Observer, result: HostResult) -> None:
    if outcome.before != plan.release:
        with step(obs, host.name, "activate", pool.name) as s:
            release.activate(ex, host, pool, plan.release, plan.command)
            s.detail = f"{outcome.before or '-'} -> {plan.release}"
    outcome.passed_point_of_no_return = True
    outcome.after = plan.release
    try:
        roll_to(ex, host, pool, plan.release, obs, plan.timeout, result)
    except RolloutError as exc:
        if not outcome.before or outcome.before == plan.release:
            raise
        serving = revert(ex, host, pool, plan, outcome, obs, result)
        raise RolloutError(f"{exc}; {reverted(host, pool, outcome.before, plan.release, serving)}"
                           ) from None


def revert(ex: Executor, host: Host, pool: Pool, plan: Plan, outcome: PoolOutcome,
           obs: Observer, result: HostResult) -> int:
    """This host goes back to the release it ran before; the failed release is marked bad.
    Returns how many of the pool's replicas are in rotation afterwards (read back, since
    the message to the operator says so)."""
    previous = outcome.before
    assert previous is not None
    with step(obs, host.name, "revert", pool.name) as s:
        release.activate(ex, host, pool, previous, f"revert of {plan.command}")
        release.mark_bad(ex, host, pool, plan.release)
        s.detail = f"{plan.release} -> {previous}, {plan.release} marked bad"
    scratch = HostResult(host.name)
    roll_to(ex, host, pool, previous, obs, plan.timeout, scratch)
    outcome.after, outcome.reverted = previous, True
    result.notes.append(f"reverted to {previous}")
    bal = balancer.read(ex, host, pool)
    return sum(balancer.member_of(bal, host, pool, n).enabled for n in pool.replica_numbers)


def reverted(host: Host, pool: Pool, previous: str, failed: str, serving: int) -> str:
    """What an automatic revert left behind, for the operator's last line."""
    if serving == pool.replicas:
        return (f"reverted: {host.name} is back on {previous} and in rotation ({serving} of "
                f"{pool.replicas} {pool.name} replicas serving); {failed} is marked bad")
    return (f"reverted to {previous}, but only {serving} of {pool.replicas} {pool.name} "
            f"replicas on {host.name} are in rotation: see `fab status --host {host.name}`; "
            f"{failed} is marked bad")


def rollback_pool(ex: Executor, host: Host, pool: Pool, plan: Plan, obs: Observer,
                  result: HostResult, outcome: PoolOutcome) -> None:
    with ExitStack() as held:
        _lock(ex, host, pool, plan, obs, held)
        outcome.before = fpm.current_release(ex, host, pool)
        _activate_and_roll(ex, host, pool, plan, outcome, obs, result)


def rollback_target(ex: Executor, host: Host, pool: Pool, to: str | None) -> str:
    """--to NAME, or the newest earlier release that is present and not marked bad."""
    present = {r.name for r in release.list_releases(ex, host, pool)}
    if to:
        if to not in present:
            raise FleetError(f"{host.name}: release {to} of pool {pool.name} is not on this "
                             f"host (present: {', '.join(sorted(present)) or 'none'})")
        return to
    current = fpm.current_release(ex, host, pool)
    bad = release.bad_releases(ex, host, pool)
    for act in reversed(release.history(ex, host, pool)):
        for name in (act.previous, act.release):
            if name and name != current and name not in bad and name in present:
                return name
    raise FleetError(f"{host.name}: pool {pool.name} has no earlier good release to roll "
                     "back to")


def cleanup_pool(ex: Executor, host: Host, pool: Pool, obs: Observer) -> list[str]:
    """Keep the newest `keep_releases`; never current, previous or a pinned release."""
    current = fpm.current_release(ex, host, pool)
    previous = release.previous_of(current, release.history(ex, host, pool))
    pinned = {p.release for p in fpm.probe(ex, host, pool).values() if p.alive and p.release}
    protected = {n for n in (current, previous, *pinned) if n}
    doomed = release.cleanup_candidates(release.list_releases(ex, host, pool),
                                        host.keep_releases, protected)
    for name in doomed:
        with step(obs, host.name, "cleanup", pool.name) as s:
            release.remove(ex, host, pool, name)
            s.detail = f"removed {name}"
    return doomed


Commands = list[tuple[str, str]]


def dry_run_commands(host: Host, pool: Pool, plan: Plan, base: str | None) -> Commands:
    """The remote commands a deploy would run on one host, in order (nothing is executed)."""
    layout = Layout.of(host, pool)
    name = plan.release
    cmds = [("lock", lock.take(layout, "<holder>")),
            ("stage", release_shell.prepare_staging(layout, name, base)),
            ("upload", release_shell.extract(layout, name) + "   < gzip tar of changed files"),
            ("verify", release_shell.verify(layout, name)),
            ("commit", release_shell.commit_release(layout, name, plan.force)),
            ("shared links", release_shell.link_shared(layout, name, pool.shared))]
    if pool.before_activate:
        cmds.append(("own copies", release_shell.own_copies(layout, name)))
    cmds += [("before_activate", redact(release_shell.before_activate(layout, name, c)))
             for c in pool.before_activate]
    cmds.append(("seal", release_shell.seal(layout, name)))
    return cmds + _activation_commands(host, pool, plan)


def dry_run_rollback_commands(host: Host, pool: Pool, plan: Plan) -> Commands:
    """The remote commands a rollback to plan.release would run on one host."""
    return [("lock", lock.take(Layout.of(host, pool), "<holder>")),
            *_activation_commands(host, pool, plan)]


def _activation_commands(host: Host, pool: Pool, plan: Plan) -> Commands:
    """Activate, then restart every replica onto the release, then unlock."""
    layout = Layout.of(host, pool)
    name = plan.release
    cmds = [("activate", release_shell.activate(layout, name, "<time>", "<user>", plan.command))]
    url = host.manager_url(pool)
    for n in pool.replica_numbers:
        member = f"unix:{layout.sock(n)}|{pool.member(n)}"
        cmds += [(f"drain {pool.name}-{n}",
                  shell.balancer_set(url, pool.balancer, member, "<nonce>", {"N": 1})),
                 (f"stop {pool.name}-{n}", shell.fpm_stop(layout, n, host.sudo)),
                 (f"start {pool.name}-{n}", shell.fpm_start(layout, n, name, host.sudo)),
                 (f"enable {pool.name}-{n}", shell.balancer_set(
                     url, pool.balancer, member, "<nonce>", {"D": 0, "N": 0, "S": 0}))]
    cmds.append(("unlock", lock.remove_if(layout, "<holder>")))
    return cmds


def deploy_host(ex: Executor, host: Host, sel: Selection, plans: dict[str, Plan],
                obs: Observer, result: HostResult, outcomes: list[PoolOutcome]) -> None:
    """Deploy every selected pool on one host (each with its own plan), then clean up."""
    for pool in sel.pools:
        outcome = PoolOutcome(host.name, pool.name)
        outcomes.append(outcome)
        deploy_pool(ex, host, pool, plans[pool.name], obs, result, outcome)
        cleanup_pool(ex, host, pool, obs)
