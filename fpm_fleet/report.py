"""What the tasks show at the end of a run: recaps, the status table, the stress table and
a dry run's plan. Rows are built from returned results; output.py draws them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from fpm_fleet import output
from fpm_fleet.core.errors import AfterActivateError
from fpm_fleet.notify import Delivery
from fpm_fleet.remote import shell
from fpm_fleet.remote.group import GroupResult
from fpm_fleet.rollout.deploy import PoolFailed, PoolOutcome

if TYPE_CHECKING:
    # only named in annotations: importing status, stress, history and dryrun here would
    # load them on every `fab` run (start-up is on the path of every deploy)
    from fpm_fleet import status as status_mod
    from fpm_fleet.releases.history import PoolHistory
    from fpm_fleet.remote.dryrun import Planned
    from fpm_fleet.stress import HostStats


def lifecycle_recap(title: str, results: GroupResult[list[str]]) -> None:
    """restart / start / stop: per host, the replicas done, or why it failed."""
    rows: list[list[object]] = []
    for o in results:
        if not o.reached and o.ok:
            rows.append([o.label, "not reached", "-", "-", "untouched"])
            continue
        done = o.value or []
        rows.append([o.label, output.ok_text(o.ok), len(done) if o.ok else "-",
                     f"{o.seconds:.1f}s", str(o.error) if o.error else ", ".join(done)])
    output.show(output.table(title, ["host", "result", "replicas done", "duration", "detail"],
                             rows))


def _pool_outcomes(value: list[PoolOutcome] | None, error: Exception | None
                   ) -> Sequence[PoolOutcome]:
    if isinstance(error, PoolFailed):
        return error.outcomes
    return value or []


def rollout_recap(title: str, results: GroupResult[list[PoolOutcome]]) -> None:
    """deploy / rollback: per host and pool, the releases before and after, the upload, and
    whether the point of no return was passed."""
    rows: list[list[object]] = []
    for o in results:
        if not o.reached:
            result = "not reached (untouched)" if o.ok else "unreachable (untouched)"
            rows.append([o.label, "-", "-", "-", result, "-", "no", str(o.error or ""), "-"])
            continue
        for p in _pool_outcomes(o.value, o.error) or [PoolOutcome(o.host, "-")]:
            result = "reverted" if p.reverted else "ok" if o.ok else "FAILED"
            rows.append([o.label, p.pool, f"{p.before or '-'} -> {p.after or p.before or '-'}",
                         f"{o.seconds:.1f}s", output.ok_text(o.ok, result, result),
                         _upload_text(p), "yes" if p.passed_point_of_no_return else "no",
                         str(o.error or ""), _hook_text(p)])
    columns = ["host", "pool", "release", "duration", "result", "upload",
               "point of no return", "error"]
    if any(p.after_activate for o in results for p in _pool_outcomes(o.value, o.error)):
        columns.append("after_activate")  # only for pools that have after_activate
    output.show(output.table(title, columns, [r[:len(columns)] for r in rows]))


def _hook_text(p: PoolOutcome) -> object:
    hook = p.after_activate
    return "-" if hook is None else output.ok_text(hook.ok, hook.text, hook.text)


def _hook_failures(results: GroupResult[list[PoolOutcome]]) -> dict[str, str]:
    """`host/pool` -> why its after_activate failed."""
    return {f"{p.host}/{p.pool}": p.after_activate.failed
            for o in results for p in _pool_outcomes(o.value, o.error)
            if p.after_activate and p.after_activate.failed}


def after_activate_failures(title: str, results: GroupResult[list[PoolOutcome]]) -> None:
    """A rollout that went through, but whose after_activate failed somewhere: each failure
    on its own line, then the error (exit 4). The release serves: nothing is undone."""
    failures = _hook_failures(results)
    for where, why in failures.items():
        output.note(f"{where}: after_activate {why}", "bold red")
    if failures:
        raise AfterActivateError(
            f"{title} done, but after_activate failed on {', '.join(failures)}; the release "
            "serves (it is not undone): run the failed commands by hand, or deploy the same "
            "release again to run after_activate again")


def notifications(deliveries: Sequence[Delivery]) -> None:
    """One line per webhook: what it received. A webhook never fails a run."""
    for d in deliveries:
        sent = d.delivered + d.failed + d.abandoned
        if d.ok:
            output.note(f"notify: {d.webhook}: {d.delivered} of {sent} delivered", "dim")
            continue
        abandoned = f", {d.abandoned} abandoned" if d.abandoned else ""
        output.note(f"notify: {d.webhook}: {d.delivered} of {sent} delivered{abandoned} "
                    f"({d.error}); the run does not depend on it", "bold yellow")


def _upload_text(p: PoolOutcome) -> str:
    up = p.upload
    if up is None:
        return "-"
    if up.reused:
        return "reused"
    return (f"{up.sent_files} sent/{up.linked_files} linked, {up.bytes_sent / 1024:.0f} KiB "
            f"in {up.seconds:.1f}s")


def history_table(pools: Sequence[PoolHistory]) -> None:
    """`fab history`: per host and pool, newest first."""
    rows = [[r.host, r.pool, r.time, r.who, r.kind, f"{r.before or '-'} -> {r.after}",
             output.ok_text(r.result == "ok", r.result, r.result), r.command]
            for ph in pools for r in ph.rows]
    output.show(output.table("history", ["host", "pool", "time", "who", "kind", "release",
                                         "result", "command"], rows))


def status_table(rows: list[status_mod.ReplicaStatus], drifts: list[status_mod.Drift],
                 terse: bool) -> None:
    if terse:
        for r in rows:
            name = f"{r.pool}-{r.replica}" if r.replica else r.pool
            output.out.print(f"{r.host} {name} {'OK' if r.ok else 'FAIL'}")
    else:
        table = [[r.host, r.pool, r.replica or "-", r.role, r.web,
                  output.ok_text(r.service == "active" or r.role == "standby", r.service,
                                 r.service), r.lb_status,
                  "-" if r.busy is None else r.busy, output.ok_text(r.ping_ok, "pong", "no"),
                  r.release or "-", r.commit[:10] if r.commit else "-",
                  r.current_release or "-", r.pid or "-",
                  "-" if r.uptime is None else f"{r.uptime}s",
                  output.ok_text(r.ok, "OK", "; ".join(r.problems) or "FAIL")] for r in rows]
        output.show(output.table("status", ["host", "pool", "replica", "role", "web",
                                            "service", "balancer",
                                            "busy", "ping", "pinned", "commit", "current",
                                            "pid",
                                            "uptime", "state"], table))
    for d in drifts:
        output.note(f"drift: {d.host}/{d.pool}: {d.message}", "bold yellow")


def stress_table(stats: list[HostStats]) -> None:
    rows = [[st.host, st.requests, output.ok_text(st.failures == 0, "0", str(st.failures)),
             st.p50_ms, st.p99_ms, st.max_ms,
             ", ".join(f"{k}: {v}" for k, v in st.releases.items()) or "-",
             ", ".join(f"{k}: {v}" for k, v in st.reasons.items())] for st in stats]
    output.show(output.table("stress", ["host", "requests", "failed", "p50 ms", "p99 ms",
                                        "max ms", "releases", "failures"], rows))


SCRIPTS_SHOWN = ("replica-lib.sh", "probe.sh")


def _scripts_named(command: str) -> str:
    """A command with the functions of templates/sh it carries shown by the file's name."""
    for name in SCRIPTS_SHOWN:
        command = command.replace(shell.script(name) + "\n", f"<templates/sh/{name}> ")
    return command


def _first_line(command: str, width: int = 100) -> str:
    """A read shown short: the probes are long scripts, and they change nothing."""
    line = command.splitlines()[0] if command else ""
    return line if len(line) <= width and "\n" not in command else line[:width] + " ..."


KIND_MARK = {"change": "", "check": "(check, assumed to pass) ", "read": "(read now) ",
             "step": ""}


def plan(title: str, planned: Sequence[Planned], reads: bool) -> None:
    """A dry run's commands per host, as the login user would run them (the reads, run
    for real, shortened to their first line)."""
    host = None
    for p in planned:
        if p.kind == "read" and not reads:
            continue
        if p.host != host:
            host = p.host
            output.out.print(f"# {title} on {p.host}, as {p.user}:", markup=False)
        if p.kind == "step":
            output.out.print(f"  == {p.what}", markup=False, highlight=False)
            continue
        command = _scripts_named(p.command)
        command = _first_line(command) if p.kind == "read" else command
        output.out.print(f"  [{p.what}] {KIND_MARK[p.kind]}{command}", markup=False,
                         highlight=False, soft_wrap=True)
    output.note("dry run: nothing was changed", "bold yellow")
