"""The result tables, built from Results (pure: no I/O), for the terminal and Markdown."""

from __future__ import annotations

import statistics

from .load import Window
from .peer import TOOLS, Peer, PeerRun
from .profile import Profile
from .render import Table
from .results import Results
from .scale import Cpu
from .steps import STEPS, Cost
from .upload import UploadBench


def ms(value: float) -> str:
    return f"{value:,.1f}"


def size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MiB"
    return f"{n / 1024:.1f} KiB"


def seconds(value: float | None, missing: str = "?") -> str:
    return missing if value is None else f"{value:.1f} s"


def fleet_note(results: Results) -> str:
    """The local fleet's own cost: the base tree (once per machine) and the boot."""
    base = ("the hosts' base tree was already built (a cache, built once per machine)"
            if results.base_build_s is None else
            f"the hosts' base tree was built in this run: {results.base_build_s:.0f} s")
    if results.fleet_up_s is None:
        return base
    return (f"{base}; fab sandbox.up of the measured fleet {seconds(results.fleet_up_s)}, "
            f"of which booting its hosts {seconds(results.fleet_boot_s)}")


def load_note(samples: list[float]) -> str:
    """How busy the shared machine was: before the fleet came up, then during the run."""
    if not samples:
        return "load average not sampled"
    return (f"1-minute load average {samples[0]:.1f} when the run began, median "
            f"{statistics.median(samples):.1f} and max {max(samples):.1f} during it "
            f"({len(samples)} samples, 10 s apart; the fleet and the load generator count)")


def machine(results: Results) -> Table:
    return Table("Machine", ["what", "value"],
                 [[k, v] for k, v in results.machine.items()],
                 f"profile: {results.profile}; run took {results.seconds:.0f} s (after "
                 f"{results.lock_wait_s:.0f} s waiting for the sandbox lock); "
                 f"{fleet_note(results)}; {load_note(results.load_1m)}")


def by_scenario(windows: list[Window]) -> dict[str, list[Window]]:
    groups: dict[str, list[Window]] = {}
    for w in windows:
        groups.setdefault(w.scenario, []).append(w)
    return groups


def action(ws: list[Window]) -> str:
    if all(w.action_detail == "-" for w in ws):
        return "-"
    failed = [str(w.round) for w in ws if not w.action_ok]
    times = sorted(w.action_seconds for w in ws)
    took = f"{times[0]:.2f} s" if times[0] == times[-1] else f"{times[0]:.2f}-{times[-1]:.2f} s"
    return f"FAILED in round {', '.join(failed)}" if failed else f"ok, {took}"


def summed_reasons(ws: list[Window]) -> str:
    total: dict[str, int] = {}
    for w in ws:
        for k, v in w.reasons.items():
            total[k] = total.get(k, 0) + v
    return ", ".join(f"{k} x{v}" for k, v in sorted(total.items(), key=lambda kv: -kv[1]))


def downtime_row(scenario: str, ws: list[Window]) -> list[str]:
    """One row per scenario over its rounds: totals, median p50, worst p99 and max."""
    return [scenario, str(len(ws)), f"{statistics.median(w.seconds for w in ws):.0f}",
            str(min(w.slow_in_flight for w in ws)), f"{sum(w.requests for w in ws):,}",
            str(sum(w.failed for w in ws)), " / ".join(str(w.failed) for w in ws),
            summed_reasons(ws) or "-", ms(statistics.median(w.fast_p50_ms for w in ws)),
            ms(max(w.fast_p99_ms for w in ws)), ms(max(w.fast_max_ms for w in ws)),
            str(sum(w.fast_over_1s for w in ws)), ms(max(w.slow_max_ms for w in ws)),
            str(sum(w.slow_cut_short for w in ws)), action(ws)]


def downtime(windows: list[Window], profile: Profile) -> Table:
    rows = [downtime_row(name, ws) for name, ws in by_scenario(windows).items()]
    rate = f"at most {profile.fast_rate:g}/s each" if profile.fast_rate else "unpaced"
    note = (f"{profile.downtime_hosts}-host fleets, 2 PHP-FPM replicas per host: the rows "
            "without 'surge' on a fleet whose pool uses the rolling strategy, the 'surge' rows "
            "on a fresh fleet with the surge strategy (a standby set of 2 more replicas), the "
            "'nginx' rows on a fresh surge fleet whose hosts run Debian's nginx instead of "
            "Apache. Same "
            f"load in every window: per host 2 loops of /ping.php (fast, {rate}), 2 of "
            f"/sleep.php?ms={profile.slow_ms} (slow) and 1 of atomic.php. Rounds are run "
            "one after the other; requests and failures are totals, p50 the median and p99 "
            "and max the worst round. 'in flight' = slow and atomic requests running when "
            "the restart/reload began (fewest of the rounds). Latencies are of successful "
            "requests. 'cut short' = slow requests answered 200 in less than 95% of "
            f"{profile.slow_ms} ms: PHP's usleep was interrupted by FPM's SIGQUIT, so the "
            "script went on without having done its work. The reloads send USR2 to every "
            "replica master at once (inside each host); 'action' is how long the restart "
            "took, or how long until every replica's status page showed a new start time "
            "(polled every ~20 ms plus the time of one status request).")
    return Table("Zero downtime: failed requests under constant load",
                 ["scenario", "rounds", "window s", "in flight", "requests", "failed",
                  "failed per round", "failures", "fast p50 ms", "fast p99 ms", "fast max ms",
                  "fast >1 s", "slow max ms", "slow cut short", "action"], rows, note)


def cost(costs: list[Cost]) -> Table:
    rows = [[c.label, str(c.replicas), f"{c.wall_s:.2f}", f"{c.steps_s:.2f}",
             f"{c.unavoidable_s:.2f}", f"{c.wall_s - c.unavoidable_s:.2f}",
             ms(c.overhead_per_replica_ms)] for c in costs]
    note = ("unavoidable = wait idle (the longest request in flight drains) + start (the new "
            "master); overhead per replica = (wall - unavoidable) / replicas, including "
            "`fab` start-up, SSH connections, guard, drain, stop, health gate and enable.")
    return Table("Rollout cost: fab restart --plain", ["run", "replica restarts", "wall s",
                                                      "steps sum s", "unavoidable s",
                                                      "overhead s",
                                                      "overhead per replica ms"], rows, note)


def step_medians(costs: list[Cost]) -> Table:
    rows = [[name, *[f"{ms(c.step_median_ms[name])} ({ms(c.step_max_ms[name])})"
                     if name in c.step_median_ms else "-" for c in costs]] for name in STEPS]
    return Table("Per replica step: median (max) ms", ["step", *[c.label for c in costs]],
                 rows)


def upload(u: UploadBench) -> Table:
    rows = [[t.method, f"{t.files_sent:,}", size(t.bytes_sent), f"{t.seconds:.2f}", t.detail]
            for t in u.transfers]
    note = (f"Release: {u.files:,} files, {size(u.size_bytes)} on disk; the second build "
            f"differs in {u.changed_files} files (the demo files carry the release name). "
            f"Local manifest scan (sha256 of every file): {u.scan_s:.2f} s per build, not "
            "included above. fpm-fleet packs with gzip level 3 in Python; tar uses gzip -6. Both "
            "log in as the inventory's user (deploy) and unpack as that user (no sudo).")
    return Table(f"Upload to one host ({u.host})", ["method", "files sent", "bytes sent",
                                                   "time s", "detail"], rows, note)


def scale(results: Results) -> Table:
    rows = [[str(r.hosts), str(r.replicas), f"{r.up_s:.1f}",
             "?" if r.boot_s is None else f"{r.boot_s:.1f}", f"{r.deploy_s:.2f}",
             f"{r.deploy_parallel_s:.2f}", f"{r.status_s:.2f}",
             "-" if r.rollback_kept_s is None else f"{r.rollback_kept_s:.2f}",
             _cpu(r.deploy_parallel_cpu), _cpu(r.rollback_kept_cpu)]
            for r in results.scale]
    cpus = results.machine.get("cpus", "?")
    note = ("Wall time of the `fab` command, no load; each fleet brought up fresh. "
            "sandbox.up boots the hosts (systemd-nspawn, as `sandbox.up` reports it: 'boot "
            "s'), runs `fab setup` on them and deploys the demo app. Deploys upload the small "
            "demo app (delta against the running release) and restart every replica, "
            "health-gated. 'deploy s': one host after another (--sequential); 'deploy "
            "--parallel N s': the default order (a canary host, then the others in parallel). "
            "The pool uses the surge strategy; 'rollback kept s': `fab rollback` to the "
            "previous release while keep_previous keeps its replicas parked (a flip of "
            "balancer flags, no process started). 'CPU s': the machine's CPU time while "
            "the command ran (/proc/stat), `fab` and every host together (in brackets, "
            f"`fab`'s own): they share this machine's {cpus} CPUs, so CPU s / {cpus} is a "
            "floor for the wall time here, whatever the order.")
    return Table("Fleet scale", ["hosts", "replicas", "sandbox.up s", "boot s", "deploy s",
                                 "deploy --parallel N s", "status s", "rollback kept s",
                                 "deploy --parallel N CPU s", "rollback kept CPU s"],
                 rows, note)


def _cpu(cpu: Cpu | None) -> str:
    return "-" if cpu is None else f"{cpu.machine_s:.2f} ({cpu.fab_s:.2f})"


def per_round(values: list[float | None]) -> str:
    return " / ".join("never" if v is None else f"{v:.2f}" for v in values)


def peer_row(tool: str, runs: list[PeerRun]) -> list[str]:
    """One row per tool over its rounds: totals, median p50, worst p99 and max, and the
    deploy and time-to-new of every round."""
    ws = [r.window for r in runs]
    failed_exits = [f"{r.round}: exit {r.exit_code}" for r in runs if r.exit_code]
    return [TOOLS.get(tool, tool), str(len(runs)), str(min(w.slow_in_flight for w in ws)),
            f"{sum(w.requests for w in ws):,}", str(sum(w.failed for w in ws)),
            " / ".join(str(w.failed) for w in ws), summed_reasons(ws) or "-",
            ms(statistics.median(w.fast_p50_ms for w in ws)),
            ms(max(w.fast_p99_ms for w in ws)), ms(max(w.fast_max_ms for w in ws)),
            str(sum(w.slow_cut_short for w in ws)),
            per_round([r.command_s for r in runs]),
            per_round([w.time_to_new_s for w in ws]),
            ", ".join(failed_exits) or "all 0"]


def peer(p: Peer, profile: Profile) -> Table:
    groups: dict[str, list[PeerRun]] = {}
    for r in p.runs:
        groups.setdefault(r.tool, []).append(r)
    rows = [peer_row(tool, runs) for tool, runs in groups.items()]
    note = (f"One host ({p.host}, 2 PHP-FPM replicas), the downtime windows' load (2 fast "
            f"/ping.php loops, 2 of /sleep.php?ms={profile.slow_ms}, 1 atomic.php). Each "
            "round deploys a new build of the demo app (same files, its name in every "
            "answer); rounds alternate, fpm-fleet first. deploy s = the command's start to "
            "its exit; time to new = from the command's start until every request started "
            "from then on answered from the new release (failed or old answers count "
            "against it). fpm-fleet: `fab deploy --release NAME`, login as deploy with "
            f"sudo, pinned replicas. Capistrano {p.capistrano}: `cap sandbox deploy` "
            "(bench/capistrano), login as root, tarball SCM, a `current` symlink that the "
            "unpinned replicas follow, then `kill -USR2` of both masters "
            "(process_control_timeout as fpm-fleet renders it: the pool's stop_timeout). "
            "'slow cut short' = slow requests answered 200 in less than 95% of "
            f"{profile.slow_ms} ms: FPM's SIGQUIT to the old workers interrupted their "
            "usleep, the work was not done (not counted in 'failed').")
    return Table("The peer: Capistrano 3 against fab deploy, under load",
                 ["tool", "rounds", "in flight", "requests", "failed", "failed per round",
                  "failures", "fast p50 ms", "fast p99 ms", "fast max ms", "slow cut short",
                  "deploy s per round", "time to new s per round", "exit"], rows, note)


def build(results: Results, profile: Profile) -> list[Table]:
    tables = [machine(results)]
    if results.downtime:
        tables.append(downtime(results.downtime, profile))
    if results.rollout_cost:
        tables += [cost(results.rollout_cost), step_medians(results.rollout_cost)]
    if results.upload:
        tables.append(upload(results.upload))
    if results.peer and results.peer.runs:
        tables.append(peer(results.peer, profile))
    if results.scale:
        tables.append(scale(results))
    return tables
