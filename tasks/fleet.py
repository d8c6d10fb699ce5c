"""Tasks on the running fleet: setup, sudoers, check, list, status, start, stop, restart,
stress."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from fpm_fleet.core.errors import UsageError
from fpm_fleet.core.inventory import Fleet, Host, Pool
from fpm_fleet.core.selection import (
    DEFAULT_PARALLEL,
    Selection,
    first_hosts,
    roll_options,
    select,
)
from tasks.boundary import boundary, command_line

if TYPE_CHECKING:
    from fpm_fleet import provision
    from fpm_fleet.core.events import Observer
    from fpm_fleet.remote.group import Proven
    from fpm_fleet.remote.runner import Runner

    HostWork = Callable[[Runner, Host, Selection, Observer, Proven], list[str]]

# Everything else is imported in the task bodies, once the first hosts are connecting:
# every `fab` run imports this module, and start-up is on the path of every deploy
# (tasks/boundary.py; ARCHITECTURE.md, Start-up).

SELECT_HELP = {
    "host": "host name, or a comma list (default: every host)",
    "pool": "one pool (default: every pool)",
    "replica": "one replica number (default: every replica)",
}


@task(help={"host": SELECT_HELP["host"]})
def setup(c: Context, host: str | None = None) -> None:
    """Provision hosts idempotently: directories owned by the inventory's user, its sudoers
    file, balancer-manager's credential, replica configs and services, the Apache site.
    Needs full root: logs in as setup_user (default: user)."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output, provision
        from fpm_fleet.host import lock
        from fpm_fleet.remote.group import HostGroup

        sel = select(s.fleet, host)

        def work(runner: Runner, h: Host) -> provision.SetupReport:
            # every pool's lock: setup rewrites the configs a deploy or a restart relies on
            # (as root: the setup login may be an administrator with sudo, and on a first
            # setup the pools' directories do not exist yet; so first say when it cannot)
            provision.require_root(runner, h)
            with lock.locked_pools(provision.AsRoot(runner), h, s.fleet.pools, command_line()):
                return provision.setup_host(runner, s.fleet, h)

        results = HostGroup(output.PlainObserver(), stop_on_failure=False,
                            connector=provision.setup_connector).run(sel.hosts, work)
        rows = []
        for r in results:
            what = (str(r.error) if r.error else
                    "; ".join(r.value.changes) if r.value and r.value.changed
                    else "nothing changed")
            rows.append([r.host, output.ok_text(r.ok), f"{r.seconds:.1f}s", what])
        output.show(output.table("setup", ["host", "result", "time", "changes"], rows))
        if not results.ok:
            raise Exit(code=4)


@task(help={"host": "the host to render it for (default: the first selected)"})
def sudoers(c: Context, host: str | None = None) -> None:
    """Print the sudoers file `fab setup` installs for the inventory's user (to review it,
    or to install it by hand): the replica services and Apache's configtest/graceful only."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output, render

        h = select(s.fleet, host).hosts[0]
        rendered = render.sudoers(s.fleet, h)
        if rendered is None:
            output.note(f"{h.name}: the inventory logs in as root: no sudoers file is needed")
            return
        output.out.print(rendered.text, end="", markup=False, highlight=False, soft_wrap=True)


@task(help={"host": SELECT_HELP["host"]})
def check(c: Context, host: str | None = None) -> None:
    """Preflight: ssh, root/sudo, tools, Apache modules and listen port, php-fpm, balancer
    members, and each pool answering 200 through Apache (its server_name, its health_path)."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output, provision
        from fpm_fleet.remote.group import HostGroup

        sel = select(s.fleet, host)
        results = HostGroup(output.PlainObserver(), stop_on_failure=False).run(
            sel.hosts, lambda runner, h: provision.check_host(runner, s.fleet, h))
        checks = [ch for r in results for ch in (r.value or [])]
        checks += [provision.Check(r.host, "ssh", False, str(r.error)) for r in results.failed]
        rows = [[ch.host, ch.name, output.ok_text(ch.ok), ch.detail] for ch in checks]
        output.show(output.table("check", ["host", "check", "result", "detail"], rows))
        if not all(ch.ok for ch in checks):
            raise Exit(code=1)


@task(name="list", help={"q": "pool names only"})
def list_(c: Context, q: bool = False) -> None:
    """Pools, replica counts and balancer settings, per host."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output
        from fpm_fleet.web import server

        if q:
            output.out.print("\n".join(p.name for p in s.fleet.pools))
            return
        rows = [[h.name, p.name, p.replicas, server.name(h), *server.describe(h, p),
                 ", ".join(p.member(n) for n in p.replica_numbers), str(h.pool_dir(p))]
                for h in s.fleet.hosts for p in s.fleet.pools]
        output.show(output.table("pools", ["host", "pool", "replicas", "web", "balancer",
                                           "lbmethod", "members read at", "members", "root"],
                                 rows))


@task(help={**SELECT_HELP, "json_": "print a JSON list on stdout", "q": "terse"})
def status(c: Context, host: str | None = None, pool: str | None = None,
           replica: str | None = None, json_: bool = False, q: bool = False) -> None:
    """Every replica: balancer state, Busy, ping, pinned release, pid, uptime; drift."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output, report
        from fpm_fleet import status as status_mod

        sel = select(s.fleet, host, pool, replica)
        rows = status_mod.collect(sel, output.PlainObserver())
        drifts = status_mod.drift(rows)
        if json_:
            output.print_json(rows)
        else:
            report.status_table(rows, drifts, q)
        if not all(r.ok for r in rows) or drifts:
            raise Exit(code=1)


# The rollout order's options (HostGroup.roll), shared by deploy, rollback and restart.
ORDER_HELP = {
    "canary": "the first K hosts roll first and must pass (new replicas gated and serving) "
              "before any other host starts (default 1)",
    "parallel": f"hosts rolling at once after the canary (default {DEFAULT_PARALLEL}). Each "
                "host keeps serving during its own roll (one replica per pool out at a time), "
                "so parallel hosts cost no capacity; the bound is the control machine's SSH "
                "sessions and CPU (upload streams), and how many hosts a bad release that "
                "passed the canary can fail (and revert) at once",
    "sequential": "one host after another, each finished before the next starts "
                  "(--canary and --parallel are then ignored)",
}

LIFECYCLE_HELP = {**SELECT_HELP, "timeout": "seconds to wait for idle / graceful exit",
                  "plain": "plain lines instead of the live display"}


@contextmanager
def reporting_interrupts(sel: Selection) -> Iterator[None]:
    """On Ctrl-C / SIGTERM (once the replica in hand was put back), show every replica."""
    try:
        yield
    except KeyboardInterrupt:
        from fpm_fleet import output, report
        from fpm_fleet import status as status_mod

        output.note("interrupted: the state of every selected replica now", "bold yellow")
        rows = status_mod.collect(sel, output.PlainObserver())
        drifts = status_mod.drift(rows)
        report.status_table(rows, drifts, terse=False)
        for line in status_mod.how_to_finish(rows, drifts):
            output.note(line, "bold yellow")
        raise


def _lifecycle(c: Context, title: str, host: str | None, pool: str | None,
               replica: str | None, plain: bool, work_of: Callable[[], HostWork],
               order: tuple[int, int, bool] = (1, 1, True)) -> None:
    """The work `work_of` makes (once the machinery may load) on every selected host, its
    pools locked, in the order the options (--canary, --parallel, --sequential) give: by
    default one host after another."""
    def first(fleet: Fleet) -> tuple[Host, ...]:
        return first_hosts(select(fleet, host, pool, replica).hosts, *roll_options(*order))

    with boundary(c, command_line(), first) as s:
        from fpm_fleet import output, report
        from fpm_fleet.core.events import step
        from fpm_fleet.host import lock
        from fpm_fleet.remote.group import HostGroup

        canary, parallel = roll_options(*order)
        sel = select(s.fleet, host, pool, replica)
        command = command_line()
        body = work_of()

        def work(runner: Runner, h: Host, obs: Observer, proven: Proven) -> list[str]:
            with ExitStack() as held:
                with step(obs, h.name, "lock", ",".join(p.name for p in sel.pools)):
                    held.enter_context(lock.locked_pools(runner, h, sel.pools, command,
                                                         *lock.reporters(obs, h.name, "")))
                return body(runner, h, sel, obs, proven)

        with reporting_interrupts(sel), output.progress(plain) as obs:
            results = HostGroup(obs, early=s.early).roll(
                sel.hosts, lambda runner, h, proven: work(runner, h, obs, proven),
                canary=canary, parallel=parallel)
        report.lifecycle_recap(title, results)
        results.raise_first_failure(title)


@task(help={**LIFECYCLE_HELP, **ORDER_HELP})
def restart(c: Context, host: str | None = None, pool: str | None = None,
            replica: str | None = None, canary: int = 1, parallel: int = DEFAULT_PARALLEL,
            sequential: bool = False, timeout: float = 60, plain: bool = False) -> None:
    """Zero-downtime rolling restart: drain, wait idle, stop, start pinned, gate, enable."""
    def work_of() -> HostWork:
        from fpm_fleet.rollout import hosts as rollout
        return lambda runner, h, sel, obs, proven: rollout.restart_host(
            runner, h, sel, obs, timeout, proven=proven)

    _lifecycle(c, "restart", host, pool, replica, plain, work_of, (canary, parallel, sequential))


@task(help={k: v for k, v in LIFECYCLE_HELP.items() if k != "timeout"})
def start(c: Context, host: str | None = None, pool: str | None = None,
          replica: str | None = None, plain: bool = False) -> None:
    """Start replicas that are not running (pinned to current.release), gate, enable."""
    def work_of() -> HostWork:
        from fpm_fleet.rollout import hosts as rollout
        return lambda runner, h, sel, obs, _: rollout.start_host(runner, h, sel, obs)

    _lifecycle(c, "start", host, pool, replica, plain, work_of)


@task(help={**LIFECYCLE_HELP, "force": "skip the guard (may take the last replica out)"})
def stop(c: Context, host: str | None = None, pool: str | None = None,
         replica: str | None = None, timeout: float = 60, force: bool = False,
         plain: bool = False) -> None:
    """Drain, wait idle, stop gracefully; never the last healthy replica unless --force."""
    def work_of() -> HostWork:
        from fpm_fleet.rollout import hosts as rollout
        return lambda runner, h, sel, obs, _: rollout.stop_host(runner, h, sel, obs, timeout,
                                                                force)

    _lifecycle(c, "stop", host, pool, replica, plain, work_of)


@task(iterable=["path"],
      help={"host": SELECT_HELP["host"],
            "pool": "the pool whose virtual host is loaded; its server_name is sent as Host "
                    "(needed when there are several pools)",
            "path": "URL path to request, e.g. /login (repeatable; default /)",
            "workers": "request loops per path and host",
            "atomic": "also request the demo app's atomic.php (detects answers mixing "
                      "two releases)",
            "duration": "seconds of load (bounded)",
            "max_requests": "stop a host's load after this many requests",
            "json_": "print the stats as JSON on stdout"})
def stress(c: Context, host: str | None = None, pool: str | None = None,
           path: list[str] | None = None, workers: int = 2, atomic: bool = False,
           duration: float = 10, max_requests: int = 200_000, json_: bool = False) -> None:
    """Bounded load on a pool's virtual host on every host; failures (with reasons), latency."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output, report
        from fpm_fleet import stress as stress_mod

        sel = select(s.fleet, host, pool)
        loops = stress_mod.path_loops(path or [], workers, atomic)
        targets = stress_mod.targets(sel.hosts, _one_pool(sel))
        host_header = stress_mod.request_headers(targets[0])["Host"]
        output.note(f"stress: {duration:g}s on {len(targets)} hosts, Host: {host_header}; "
                    "per host " + ", ".join(f"{lp.workers} x {lp.path}" for lp in loops))
        stats = stress_mod.run(targets, duration, max_requests=max_requests, loops=loops)
        if json_:
            output.print_json(stats)
        else:
            report.stress_table(stats)
        if any(st.failures for st in stats):
            raise Exit(code=1)


def _one_pool(sel: Selection) -> Pool:
    if len(sel.pools) > 1:
        raise UsageError("stress loads one pool's virtual host: add --pool (one of "
                         f"{', '.join(p.name for p in sel.pools)})")
    return sel.pools[0]
