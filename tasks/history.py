"""The `history` task: every activation and rollback per host and pool, from the hosts."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from fpm_fleet.core.errors import FleetError, UsageError
from fpm_fleet.core.selection import select
from tasks.boundary import boundary, command_line

DEFAULT_LIMIT = 20  # entries per host and pool that `fab history` shows


@task(name="history", help={
    "host": "host name, or a comma list (default: every host)",
    "pool": "one pool (default: every pool)",
    "limit": f"the newest N entries per host and pool (default {DEFAULT_LIMIT}; "
             "0: all)",
    "json_": "print a JSON list on stdout (host, pool, time, who, kind, from, to, command, "
             "result)"})
def history_(c: Context, host: str | None = None, pool: str | None = None,
             limit: int = DEFAULT_LIMIT, json_: bool = False) -> None:
    """Every activation per host and pool: when, who, from -> to, command, result.

    Deploys, rollbacks and automatic reverts, newest first, as the hosts recorded them."""
    with boundary(c, command_line()) as s:
        from fpm_fleet import output, report
        from fpm_fleet.host.pool import HostPool
        from fpm_fleet.releases import history as history_mod
        from fpm_fleet.remote.group import HostGroup

        if limit < 0:
            raise UsageError("--limit must be 0 (all) or more")
        sel = select(s.fleet, host, pool)
        results = HostGroup(output.PlainObserver(), parallel=8, stop_on_failure=False).run(
            sel.hosts, lambda runner, h: [history_mod.read(HostPool(runner, h, p), limit)
                                          for p in sel.pools])
        pools = [ph for o in results for ph in (o.value or [])]
        if json_:
            output.print_json([row.as_json() for ph in pools for row in ph.rows])
        else:
            report.history_table(pools)
        for ph in pools:
            if ph.skipped:
                output.note(f"{ph.host}/{ph.pool}: {ph.skipped} malformed history line(s) "
                            "skipped (state/history)", "bold yellow")
        for o in results.failed:
            output.note(f"{o.host}: history not read: {o.error}", "bold red")
        if not results.ok:
            raise FleetError("history: some hosts could not be read")
