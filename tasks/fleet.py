"""Tasks on the running fleet: setup, check, list, status, start, stop, restart."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from fpm_fleet import output
from fpm_fleet import status as status_mod
from fpm_fleet import stress as stress_mod
from fpm_fleet.errors import UsageError
from fpm_fleet.events import Observer, step
from fpm_fleet.host import lock, provision, render
from fpm_fleet.inventory import Host, Pool
from fpm_fleet.remote.ssh import Executor
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout.hosts import HostResult, Runner, Selection
from tasks.boundary import boundary, command_line

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
        sel = rollout.select(s.fleet, host)
        reports: dict[str, provision.SetupReport] = {}

        def work(ex: Executor, h: Host, result: HostResult) -> None:
            # every pool's lock: setup rewrites the configs a deploy or a restart relies on
            # (as root: the setup login may be an administrator with sudo, and on a first
            # setup the pools' directories do not exist yet; so first say when it cannot)
            provision.require_root(ex, h)
            with lock.locked_pools(provision.AsRoot(ex), h, s.fleet.pools, command_line()):
                reports[h.name] = provision.setup_host(ex, s.fleet, h)

        results = Runner(output.PlainObserver(), stop_on_failure=False,
                         connector=provision.setup_connector).run(sel.hosts, work)
        rows = []
        for r in results:
            rep = reports.get(r.host)
            what = (r.error if not r.ok else
                    "; ".join(rep.changes) if rep and rep.changed else "nothing changed")
            rows.append([r.host, output.ok_text(r.ok), f"{r.seconds:.1f}s", what])
        output.show(output.table("setup", ["host", "result", "time", "changes"], rows))
        _exit_on_failure(results)


@task(help={"host": "the host to render it for (default: the first selected)"})
def sudoers(c: Context, host: str | None = None) -> None:
    """Print the sudoers file `fab setup` installs for the inventory's user (to review it,
    or to install it by hand): the replica services and Apache's configtest/graceful only."""
    with boundary(c, command_line()) as s:
        h = rollout.select(s.fleet, host).hosts[0]
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
        sel = rollout.select(s.fleet, host)
        checks: list[provision.Check] = []

        def work(ex: Executor, h: Host, result: HostResult) -> None:
            found = provision.check_host(ex, s.fleet, h)
            checks.extend(found)
            result.ok = all(ch.ok for ch in found)

        results = Runner(output.PlainObserver(), stop_on_failure=False).run(sel.hosts, work)
        checks += [provision.Check(r.host, "ssh", False, r.error) for r in results if r.error]
        rows = [[ch.host, ch.name, output.ok_text(ch.ok), ch.detail] for ch in checks]
        output.show(output.table("check", ["host", "check", "result", "detail"], rows))
        if not all(ch.ok for ch in checks) or not all(r.ok for r in results):
            raise Exit(code=1)


@task(name="list", help={"q": "pool names only"})
def list_(c: Context, q: bool = False) -> None:
    """Pools, replica counts and balancer settings, per host."""
    with boundary(c, command_line()) as s:
        if q:
            output.out.print("\n".join(p.name for p in s.fleet.pools))
            return
        rows = [[h.name, p.name, p.replicas, f"balancer://{p.balancer}", "bybusyness",
                 h.manager_url(p), ", ".join(p.member(n) for n in p.replica_numbers),
                 str(h.pool_dir(p))]
                for h in s.fleet.hosts for p in s.fleet.pools]
        output.show(output.table("pools", ["host", "pool", "replicas", "balancer", "lbmethod",
                                           "manager", "members", "root"], rows))


@task(help={**SELECT_HELP, "json_": "print a JSON list on stdout", "q": "terse"})
def status(c: Context, host: str | None = None, pool: str | None = None,
           replica: str | None = None, json_: bool = False, q: bool = False) -> None:
    """Every replica: balancer state, Busy, ping, pinned release, pid, uptime; drift."""
    with boundary(c, command_line()) as s:
        sel = rollout.select(s.fleet, host, pool, replica)
        rows = collect_status(sel)
        drifts = status_mod.drift(rows)
        if json_:
            output.print_json(rows)
        else:
            _print_status(rows, drifts, q)
        if not all(r.ok for r in rows) or drifts:
            raise Exit(code=1)



def collect_status(sel: Selection) -> list[status_mod.ReplicaStatus]:
    rows: dict[str, list[status_mod.ReplicaStatus]] = {}

    def work(ex: Executor, h: Host, result: HostResult) -> None:
        rows[h.name] = [row for p in sel.pools
                        for row in status_mod.pool_status(ex, h, p, sel.replicas(h, p))]

    results = Runner(output.PlainObserver(), parallel=8, stop_on_failure=False).run(
        sel.hosts, work)
    for r in results:
        if not r.ok:
            rows[r.host] = status_mod.unreachable(next(h for h in sel.hosts if h.name == r.host),
                                                  sel.pools, r.error)
    return [row for h in sel.hosts for row in rows.get(h.name, [])]


def _print_status(rows: list[status_mod.ReplicaStatus], drifts: list[status_mod.Drift],
                  q: bool) -> None:
    if q:
        for r in rows:
            name = f"{r.pool}-{r.replica}" if r.replica else r.pool
            output.out.print(f"{r.host} {name} {'OK' if r.ok else 'FAIL'}")
    else:
        table = [[r.host, r.pool, r.replica or "-",
                  output.ok_text(r.service == "active", r.service, r.service), r.lb_status,
                  "-" if r.busy is None else r.busy, output.ok_text(r.ping_ok, "pong", "no"),
                  r.release or "-", r.current_release or "-", r.pid or "-",
                  "-" if r.uptime is None else f"{r.uptime}s",
                  output.ok_text(r.ok, "OK", "; ".join(r.problems) or "FAIL")] for r in rows]
        output.show(output.table("status", ["host", "pool", "replica", "service", "balancer",
                                            "busy",
                                            "ping", "pinned", "current", "pid", "uptime",
                                            "state"], table))
    for d in drifts:
        output.note(f"drift: {d.host}/{d.pool}: {d.message}", "bold yellow")


def _exit_on_failure(results: list[HostResult]) -> None:
    if not all(r.ok for r in results):
        raise Exit(code=4)


def _recap(title: str, results: list[HostResult]) -> None:
    rows = [[r.host, output.ok_text(r.ok), r.done, r.failed, f"{r.seconds:.1f}s",
             r.error or "; ".join(r.notes)] if r.reached or not r.ok else
            [r.host, "not reached", 0, 0, "-", "untouched"] for r in results]
    output.show(output.table(title, ["host", "result", "replicas done", "failed", "duration",
                                     "detail"], rows))


HostWork = Callable[[Executor, Host, Selection, Observer, HostResult], None]


LIFECYCLE_HELP = {**SELECT_HELP, "timeout": "seconds to wait for idle / graceful exit",
                  "plain": "plain lines instead of the live display"}


@contextmanager
def reporting_interrupts(sel: Selection) -> Iterator[None]:
    """On Ctrl-C / SIGTERM (once the replica in hand was put back), show every replica."""
    try:
        yield
    except KeyboardInterrupt:
        output.note("interrupted: the state of every selected replica now", "bold yellow")
        rows = collect_status(sel)
        drifts = status_mod.drift(rows)
        _print_status(rows, drifts, q=False)
        for line in status_mod.how_to_finish(rows, drifts):
            output.note(line, "bold yellow")
        raise


def _lifecycle(c: Context, title: str, host: str | None, pool: str | None,
               replica: str | None, plain: bool, body: HostWork) -> None:
    with boundary(c, command_line()) as s:
        sel = rollout.select(s.fleet, host, pool, replica)
        command = command_line()

        def work(ex: Executor, h: Host, r: HostResult, obs: Observer) -> None:
            with ExitStack() as held:
                with step(obs, h.name, "lock", ",".join(p.name for p in sel.pools)):
                    held.enter_context(lock.locked_pools(ex, h, sel.pools, command,
                                                         *lock.reporters(obs, h.name, "")))
                body(ex, h, sel, obs, r)

        with reporting_interrupts(sel), output.progress(plain) as obs:
            results = Runner(obs).run(sel.hosts, lambda ex, h, r: work(ex, h, r, obs))
        _recap(title, results)
        rollout.stopped(title, results)


@task(help=LIFECYCLE_HELP)
def restart(c: Context, host: str | None = None, pool: str | None = None,
            replica: str | None = None, timeout: float = 60, plain: bool = False) -> None:
    """Zero-downtime rolling restart: drain, wait idle, stop, start pinned, gate, enable."""
    _lifecycle(c, "restart", host, pool, replica, plain,
               lambda ex, h, sel, obs, r: rollout.restart_host(ex, h, sel, obs, timeout, r))


@task(help={k: v for k, v in LIFECYCLE_HELP.items() if k != "timeout"})
def start(c: Context, host: str | None = None, pool: str | None = None,
          replica: str | None = None, plain: bool = False) -> None:
    """Start replicas that are not running (pinned to current.release), gate, enable."""
    _lifecycle(c, "start", host, pool, replica, plain,
               lambda ex, h, sel, obs, r: rollout.start_host(ex, h, sel, obs, r))


@task(help={**LIFECYCLE_HELP, "force": "skip the guard (may take the last replica out)"})
def stop(c: Context, host: str | None = None, pool: str | None = None,
         replica: str | None = None, timeout: float = 60, force: bool = False,
         plain: bool = False) -> None:
    """Drain, wait idle, stop gracefully; never the last healthy replica unless --force."""
    _lifecycle(c, "stop", host, pool, replica, plain,
               lambda ex, h, sel, obs, r: rollout.stop_host(ex, h, sel, obs, timeout, force, r))


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
        sel = rollout.select(s.fleet, host, pool)
        loops = stress_mod.path_loops(path or [], workers, atomic)
        targets = stress_mod.targets(sel.hosts, _one_pool(sel))
        host_header = stress_mod.request_headers(targets[0])["Host"]
        output.note(f"stress: {duration:g}s on {len(targets)} hosts, Host: {host_header}; "
                    "per host " + ", ".join(f"{lp.workers} x {lp.path}" for lp in loops))
        stats = stress_mod.run(targets, duration, max_requests=max_requests, loops=loops)
        if json_:
            output.print_json(stats)
        else:
            _print_stress(stats)
        if any(st.failures for st in stats):
            raise Exit(code=1)


def _one_pool(sel: Selection) -> Pool:
    if len(sel.pools) > 1:
        raise UsageError("stress loads one pool's virtual host: add --pool (one of "
                         f"{', '.join(p.name for p in sel.pools)})")
    return sel.pools[0]


def _print_stress(stats: list[stress_mod.HostStats]) -> None:
    rows = [[st.host, st.requests, output.ok_text(st.failures == 0, "0", str(st.failures)),
             st.p50_ms, st.p99_ms, st.max_ms,
             ", ".join(f"{k}: {v}" for k, v in st.releases.items()) or "-",
             ", ".join(f"{k}: {v}" for k, v in st.reasons.items())] for st in stats]
    output.show(output.table("stress", ["host", "requests", "failed", "p50 ms", "p99 ms",
                                        "max ms", "releases", "failures"], rows))
