"""The local fleet brought up for tests, benchmarks and the demo: boot the hosts
(sandbox/hosts.py), provision them and deploy the demo app, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

from fpm_fleet import output, provision, stress
from fpm_fleet.core import inventory
from fpm_fleet.core.errors import FleetError
from fpm_fleet.core.inventory import Host
from fpm_fleet.core.selection import select
from fpm_fleet.releases import manifest
from fpm_fleet.remote.group import GroupResult, HostGroup
from fpm_fleet.remote.runner import Runner
from fpm_fleet.rollout.deploy import Plan, each_pool
from fpm_fleet.sandbox import base as sandbox_base
from fpm_fleet.sandbox import demo as demo_app
from fpm_fleet.sandbox import hosts as sandbox

T = TypeVar("T")


def bring_up(base: Path, count: int, release: str | None,
             strategy: str = "surge", web: str = "apache") -> inventory.Fleet:
    """Boot `count` hosts (reusing those already up), then provision them and deploy
    `release` of the demo app (with no release: hosts as a fresh server is). `web`: apache,
    nginx, or mixed (Apache and nginx hosts in turn)."""
    sandbox.require_root()
    sandbox.web_of(web, 0)
    if not 1 <= count <= 50:
        raise FleetError("sandbox: --hosts must be 1..50")
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    tree, built = sandbox_base.ensure(base / "logs" / "base-build.log")
    if built:
        output.note(f"built the hosts' base tree in {built:.0f}s ({tree}; reused from now on)")
    hosts = [sandbox.SandboxHost(i) for i in range(1, count + 1)]
    client_pub = Path(f"{sandbox.ensure_client_key(base)}.pub").read_text()
    sandbox.ensure_bridge()
    booted = time.monotonic()
    for h in hosts:
        sandbox.ensure_netns(h)
        sandbox.ensure_overlay(h, tree)
        sandbox.write_identity(h, client_pub)
        sandbox.launch(h)
    states = {h.name: sandbox.wait_booted(h) for h in hosts}
    output.note(f"{count} hosts booted in {time.monotonic() - booted:.1f}s: "
                + ", ".join(f"{n} {s}" for n, s in states.items()))
    (base / "known_hosts").write_text("".join(sandbox.known_hosts_line(h) for h in hosts))
    path = base / "hosts.toml"
    path.write_text(sandbox.inventory(hosts, base, strategy=strategy, web=web))
    fleet = inventory.load(path)
    if release is not None:
        provision_and_deploy(fleet, base, release)
    return fleet


def provision_and_deploy(fleet: inventory.Fleet, base: Path, release: str) -> None:
    obs = output.PlainObserver()
    output.start_log(fleet.log_dir, "sandbox.up")

    def setup(runner: Runner, h: Host) -> provision.SetupReport:
        return provision.setup_host(runner, fleet, h)

    _check(HostGroup(obs, parallel=4, connector=provision.setup_connector).run(fleet.hosts,
                                                                                setup))
    pool = fleet.pools[0]
    source = demo_app.build(Path(pool.source), release)
    plan = Plan(release=release, command="sandbox.up", timeout=30, source=source,
                manifest=manifest.scan(source))
    sel = select(fleet)
    _check(HostGroup(obs, parallel=4).run(
        fleet.hosts, lambda runner, h: each_pool(runner, h, sel, {pool.name: plan}, obs)))


def _check(results: GroupResult[T]) -> None:
    if not results.ok:
        raise FleetError("sandbox: " + "; ".join(str(r.error) for r in results.failed))


def demo(base: Path, hosts: int, web: str = "apache") -> None:
    """Bring up the fleet on v1, then deploy v2 with `fab deploy` under load; show the
    requests (0 failed) and the fleet's status."""
    started = time.monotonic()
    fleet = bring_up(base, hosts, "v1", web=web)
    output.note(f"sandbox up: {len(fleet.hosts)} hosts in {time.monotonic() - started:.1f}s",
                "bold green")
    demo_app.build(Path(fleet.pools[0].source), "v2")
    targets = stress.targets(fleet.hosts)
    output.note("load: 2 fast + 2 slow (2 s) + 1 atomic.php client per host; deploying v2",
                "bold")
    load = stress.Stress(targets, slow_ms=2000).start()
    time.sleep(2)
    env = {**os.environ, "FABRIC_INVENTORY": str(base / "hosts.toml")}
    fab = Path(sys.executable).with_name("fab")
    deployed = subprocess.run([str(fab), "deploy", "--release", "v2"], env=env, check=False)
    time.sleep(2)
    stats = load.stop()
    rows = [[st.host, st.requests, output.ok_text(st.failures == 0, "0", str(st.failures)),
             st.p50_ms, st.p99_ms, st.max_ms,
             ", ".join(f"{k}: {v}" for k, v in sorted(st.releases.items()))] for st in stats]
    output.show(output.table("requests during the deploy", ["host", "requests", "failed",
                                                            "p50 ms", "p99 ms", "max ms",
                                                            "answered by"], rows))
    subprocess.run([str(fab), "status"], env=env, check=False)
    failed = sum(st.failures for st in stats)
    output.note(f"deploy exit {deployed.returncode}; {failed} failed requests of "
                f"{sum(st.requests for st in stats)}. The fleet is still up: try "
                f"`curl http://{fleet.hosts[0].address}/ping.php`; remove it with "
                "`.venv/bin/fab sandbox.down`.", "bold green" if not failed else "bold red")
    if deployed.returncode or failed:
        raise FleetError(f"demo: the deploy exited {deployed.returncode} with {failed} failed "
                         "requests")
