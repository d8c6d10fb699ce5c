"""`fab sandbox.up` / `fab sandbox.down`: the local test fleet."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from fpm_fleet import inventory, output, stress
from fpm_fleet.errors import FleetError
from fpm_fleet.host import provision
from fpm_fleet.inventory import Host
from fpm_fleet.releases import manifest
from fpm_fleet.remote.ssh import Executor
from fpm_fleet.rollout import hosts as rollout
from fpm_fleet.rollout.deploy import Plan, PoolOutcome, deploy_host
from fpm_fleet.rollout.hosts import HostResult, Runner
from fpm_fleet.sandbox import base as sandbox_base
from fpm_fleet.sandbox import demo as demo_app
from fpm_fleet.sandbox import hosts as sandbox

DEFAULT_DIR = "sandbox"


@task(help={"hosts": "how many hosts (Debian 12 containers with systemd)",
            "dir": "sandbox directory",
            "release": "name of the demo release deployed first",
            "bare": "only boot the hosts (fresh Debian servers): no setup, no deploy"})
def up(c: Context, hosts: int = 3, dir: str = DEFAULT_DIR, release: str = "v1",
       bare: bool = False) -> None:
    """Boot N Debian 12 hosts (systemd), provision them, deploy the demo app."""
    started = time.monotonic()
    try:
        with sandbox.exclusive():
            fleet = bring_up(Path(dir).resolve(), hosts, None if bare else release)
    except FleetError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    output.note(f"sandbox up: {len(fleet.hosts)} hosts in {time.monotonic() - started:.1f}s; "
                f"inventory {fleet.path}", "bold green")
    for h in fleet.hosts:
        output.out.print(f"{h.name}  http://{h.address}/ping.php")


@task(help={"dir": "sandbox directory",
            "purge": "also remove the cached base tree of the hosts (rebuilt by the next up)"})
def down(c: Context, dir: str = DEFAULT_DIR, purge: bool = False) -> None:
    """Power off and remove every host: containers, namespaces, mounts, cgroups, files."""
    base = Path(dir).resolve()
    try:
        sandbox.require_root()
        with sandbox.exclusive():
            removed = sandbox.down(base)
            if purge:
                removed += sandbox_base.purge()
    except FleetError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None
    for line in removed or ["nothing to remove"]:
        output.note(line)
    left = sandbox.leftovers(base)
    if left:
        raise Exit("left behind: " + "; ".join(left), code=1)


def bring_up(base: Path, count: int, release: str | None) -> inventory.Fleet:
    """Boot `count` hosts (reusing those already up), then provision them and deploy
    `release` of the demo app (with no release: hosts as a fresh server is)."""
    sandbox.require_root()
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
    path.write_text(sandbox.inventory(hosts, base))
    fleet = inventory.load(path)
    if release is not None:
        provision_and_deploy(fleet, base, release)
    return fleet


def provision_and_deploy(fleet: inventory.Fleet, base: Path, release: str) -> None:
    obs = output.PlainObserver()
    output.start_log(fleet.log_dir, "sandbox.up")

    def setup(ex: Executor, h: Host, result: HostResult) -> None:
        provision.setup_host(ex, fleet, h)

    _check(Runner(obs, parallel=4, connector=provision.setup_connector).run(fleet.hosts, setup))
    pool = fleet.pools[0]
    source = demo_app.build(Path(pool.source), release)
    plan = Plan(release=release, command="sandbox.up", timeout=30, source=source,
                manifest=manifest.scan(source))
    sel = rollout.select(fleet)
    outcomes: list[PoolOutcome] = []
    _check(Runner(obs, parallel=4).run(
        fleet.hosts, lambda ex, h, r: deploy_host(ex, h, sel, {pool.name: plan}, obs, r,
                                                  outcomes)))


def _check(results: list[HostResult]) -> None:
    failed = [r for r in results if not r.ok]
    if failed:
        raise FleetError("sandbox: " + "; ".join(r.error for r in failed))


@task(help={"release": "release name written into every file of the demo app",
            "dest": "where to write it (default: the sandbox pool's source directory)",
            "unhealthy": "make health.php answer 500 (to try the automatic revert)",
            "files": "add this many ~10 KB filler files (upload benchmarks)",
            "dir": "sandbox directory"})
def build(c: Context, release: str = "v2", dest: str | None = None, unhealthy: bool = False,
          files: int = 0, dir: str = DEFAULT_DIR) -> None:
    """Build the demo application as release NAME, ready for `fab deploy`."""
    target = Path(dest) if dest else Path(dir).resolve() / "build" / "www"
    demo_app.build(target, release, healthy=not unhealthy, filler_files=files)
    output.note(f"built demo release {release} in {target}"
                + (" (health.php fails)" if unhealthy else ""))


@task(help={"hosts": "how many hosts", "dir": "sandbox directory"})
def demo(c: Context, hosts: int = 3, dir: str = DEFAULT_DIR) -> None:
    """Bring up the sandbox, then deploy release v2 under load and show 0 failed requests."""
    try:
        with sandbox.exclusive():
            _demo(c, Path(dir).resolve(), hosts, dir)
    except FleetError as exc:
        raise Exit(f"error: {exc}", code=exc.exit_code) from None


def _demo(c: Context, base: Path, hosts: int, dir: str) -> None:
    up(c, hosts=hosts, dir=dir, release="v1")
    fleet = inventory.load(base / "hosts.toml")
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
        raise Exit(code=1)
