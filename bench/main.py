"""`bench/run [--quick] [--only SECTION]`: the benchmark, start to finish.

Takes the machine's sandbox lock, brings up the sandbox, measures, and always tears the
sandbox down again; then prints the tables and writes bench/results/latest.json (plus a
timestamped copy) and bench/results/latest.md (the same tables in Markdown).
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import subprocess
import sys
import time
from types import FrameType

from fpm_fleet.core.errors import FleetError
from fpm_fleet.core.inventory import Fleet
from fpm_fleet.sandbox import hosts as sandbox_hosts

from . import downtime, machine, peer, render, sandbox, scale, steps, tables, upload
from .errors import BenchError
from .profile import FULL, QUICK, Profile
from .results import RESULTS_DIR, Results, write

SECTIONS = ("downtime", "surge", "nginx", "upload", "peer", "scale")
FAILURES = (BenchError, FleetError, OSError, subprocess.SubprocessError, KeyboardInterrupt)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run", description="fpm-fleet benchmarks on the local sandbox fleet: zero "
        "downtime (rolling and surge restart vs reload), surge deploy, the same on nginx hosts, "
        "rollout cost, upload, "
        "the peer (Capistrano 3 vs fab deploy), fleet scale.")
    parser.add_argument("--quick", action="store_true",
                        help="short windows, 2,000-file upload, scale 1 and 3 hosts only")
    parser.add_argument("--fast-rate", type=float, default=None, metavar="N",
                        help="requests/s per fast load loop (default 100; 0 = unpaced)")
    parser.add_argument("--only", action="append", choices=SECTIONS,
                        help="run only this section (repeatable); default: all "
                             "(downtime includes the rollout cost)")
    return parser.parse_args(argv)


def measure(results: Results, profile: Profile, sections: tuple[str, ...]) -> None:
    """Every section in turn; results fill in as they come, so a failure keeps the rest."""
    if "downtime" in sections or "upload" in sections:
        # the rolling strategy's fleet: the one-replica-at-a-time restart and its step costs
        fresh = sandbox.up(profile.downtime_hosts, strategy="rolling")
        results.base_build_s = fresh.base_build_s
        results.fleet_up_s, results.fleet_boot_s = round(fresh.seconds, 2), fresh.boot_s
        fleet = fresh.fleet
        if "downtime" in sections:
            measure_downtime(results, profile, fleet)
        if "upload" in sections:
            results.upload = upload.run(fleet, profile.files, render.say)
    if "surge" in sections:
        surge_fleet = sandbox.up(profile.downtime_hosts).fleet
        downtime.run_surge(surge_fleet, profile, render.say, results.downtime)
    if "nginx" in sections:
        nginx_fleet = sandbox.up(profile.downtime_hosts, web="nginx").fleet
        downtime.run_surge(nginx_fleet, profile, render.say, results.downtime, "nginx")
        rolling = sandbox.up(profile.downtime_hosts, strategy="rolling", web="nginx").fleet
        downtime.run_nginx_reload(rolling, profile, render.say, results.downtime)
    if "peer" in sections:
        measure_peer(results, profile)
    if "scale" in sections:
        results.scale = scale.run(profile.scale, profile.status_runs, render.say)
        built = [r.base_build_s for r in results.scale if r.base_build_s is not None]
        if results.base_build_s is None and built:
            results.base_build_s = built[0]
    results.complete = True


def measure_downtime(results: Results, profile: Profile, fleet: Fleet) -> None:
    """Part 1 (windows under load) and part 2 (the restarts' own cost, loaded and idle)."""
    outcome = downtime.Downtime(windows=results.downtime)
    try:
        downtime.run(fleet, profile, render.say, outcome)
    finally:
        results.fleet_restored = outcome.restored
        if outcome.restart_runs:
            results.rollout_cost.append(rollout_cost("under load", outcome.restart_runs))
    render.say("rollout cost: fab restart on the idle fleet")
    idle = [sandbox.fab("restart", "--plain") for _ in range(profile.rounds)]
    results.rollout_cost.append(rollout_cost("idle fleet", idle))


def measure_peer(results: Results, profile: Profile) -> None:
    """Capistrano and `fab deploy` on a fleet of their own (one host by default)."""
    fleet = sandbox.up(profile.peer_hosts).fleet
    results.peer = peer.Peer()
    peer.run(fleet, profile, render.say, results.peer, serving=sandbox.FIRST_RELEASE)


def rollout_cost(label: str, runs: list[sandbox.Run]) -> steps.Cost:
    """One Cost over several `fab restart` runs: walls added up, steps pooled."""
    pooled = [s for run in runs for s in steps.parse(run.stderr)]
    rounds = f" ({len(runs)} runs)" if len(runs) > 1 else ""
    return steps.cost(label + rounds, sum(run.seconds for run in runs), pooled)


def run_locked(results: Results, profile: Profile, sections: tuple[str, ...]) -> None:
    """Measure under the sandbox lock; the sandbox is torn down whatever happens."""
    waited = time.monotonic()
    with sandbox_hosts.exclusive(wait=True, say=render.say):
        started = time.monotonic()
        results.lock_wait_s = round(started - waited, 1)
        try:
            with machine.load_samples() as samples:
                results.load_1m = samples  # fills in while the run lasts
                measure(results, profile, sections)
        except FAILURES as exc:
            results.errors.append(f"{type(exc).__name__}: {exc}")
            render.warn(f"failed: {exc}")
        finally:
            render.say("tearing the sandbox down")
            try:
                sandbox.down()
            except FAILURES as exc:
                results.errors.append(f"teardown: {exc}")
                render.warn(f"teardown failed: {exc}")
            results.seconds = round(time.monotonic() - started, 1)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.fast_rate is not None:
        profile = dataclasses.replace(profile, fast_rate=args.fast_rate)
    sections = tuple(args.only or SECTIONS)
    results = Results(profile.name, settings=dataclasses.asdict(profile),
                      machine=machine.facts())
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        run_locked(results, profile, sections)
    except KeyboardInterrupt:
        render.warn("interrupted while waiting for the sandbox lock: nothing was run")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    results.finished = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    built = tables.build(results, profile)
    render.show(built)
    paths = write(results)
    (RESULTS_DIR / "latest.md").write_text(render.markdown(built))
    render.say("wrote " + ", ".join(str(p) for p in paths) + f", {RESULTS_DIR / 'latest.md'}")
    for error in results.errors:
        render.warn(error)
    return 0 if results.complete and not results.errors else 1


if __name__ == "__main__":
    sys.exit(main())
