"""The peer: Capistrano 3 against `fab deploy`, same release, same host, same load.

One host of the local fleet, the load of the downtime windows (fast requests, 2 s requests,
atomic.php), rounds alternating between the tools: `fab deploy --release NAME` (whatever its
default strategy is) and `cap sandbox deploy` (bench/capistrano: Debian's Capistrano 3, a
tarball SCM, releases/<timestamp> plus a `current` symlink, then `kill -USR2` of every
PHP-FPM master). Each rolls out a new build of the demo app, whose answers name the release
that served them, so the window shows when every new request was answered by it.

Capistrano gets the setup its users have: replicas that follow a symlink. fpm-fleet's
replicas bind-mount `current.release` on `current/` at start (pinning), so a USR2 would
keep them on the old release. For Capistrano's rounds the replicas are stopped, a drop-in
clears the bind mount, `current/` becomes a symlink to Capistrano's `current`, Capistrano
deploys the release already serving (unmeasured seed), and the replicas start again, same
configs, same sockets, same Apache site. For fpm-fleet's rounds all that is undone; the
host must pass `fab status` (pinned, healthy) before each of them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from fpm_fleet import stress
from fpm_fleet.core.inventory import Fleet, Host, Pool
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote.shell import q
from fpm_fleet.rollout import retire
from fpm_fleet.sandbox import demo
from fpm_fleet.sandbox.hosts import SandboxHost

from . import sandbox
from .errors import BenchError
from .load import Window, run_window
from .profile import Profile
from .sandbox import SANDBOX, Run, in_host, sandbox_host

CAPFILE_DIR = Path(__file__).resolve().parent / "capistrano"
DEPLOY_ROOT = PurePosixPath("/srv/capistrano")
DROPIN = "zz-bench-capistrano.conf"
TOOLS = {
    "fab": "fab deploy (fpm-fleet)",
    "cap": "Capistrano 3 (symlink + kill -USR2)",
}


@dataclass
class PeerRun:
    """One deploy under load: the command's own exit and time, and what clients saw."""

    tool: str
    round: int
    release: str
    exit_code: int
    command_s: float
    window: Window
    output_tail: str = ""


@dataclass
class Peer:
    host: str = ""
    capistrano: str = ""
    runs: list[PeerRun] = field(default_factory=list)
    restored: bool = False


@dataclass(frozen=True)
class CapSite:
    """One pool on one host as Capistrano deploys it, and what its replicas need to follow."""

    units: tuple[str, ...]  # every slot of the pool: all are stopped on a switch
    current: PurePosixPath  # the pool's current/, where Apache sends PHP requests
    deploy_to: PurePosixPath
    dropin: PurePosixPath
    # the services that run, for both tools: those serving when Capistrano's setup began
    # (a surge pool's set in rotation), so that each tool has the same replicas, and
    # fpm-fleet's rounds start from its own state (the standby set stopped), not from a
    # standby set Capistrano left running in rotation
    serving: tuple[str, ...] = ()

    @property
    def started(self) -> tuple[str, ...]:
        """The services both tools run (all of them unless `serving` says)."""
        return self.serving or self.units

    @classmethod
    def of(cls, host: Host, pool: Pool, serving: tuple[str, ...] = ()) -> CapSite:
        layout = Layout.of(host, pool)
        units = tuple(layout.unit(n) for n in pool.replica_numbers)
        return cls(units, layout.current, DEPLOY_ROOT / pool.name,
                   PurePosixPath(f"{layout.unit_file}.d") / DROPIN, serving)


def order(rounds: int) -> list[tuple[int, str]]:
    """(round, tool) alternating, fpm-fleet first: it starts on the normal setup."""
    return [(n, tool) for n in range(1, rounds + 1) for tool in TOOLS]


def enter_script(site: CapSite) -> str:
    """Replicas stopped and unpinned; current/ a symlink to Capistrano's current."""
    units = " ".join(map(q, site.units))
    return "\n".join([
        "set -e",
        f"systemctl stop {units}",
        f"mkdir -p {q(str(site.dropin.parent))}",
        # An empty assignment clears the unit's BindReadOnlyPaths= list.
        f"printf '[Service]\\nBindReadOnlyPaths=\\n' > {q(str(site.dropin))}",
        "systemctl daemon-reload",
        f"rmdir {q(str(site.current))}",
        f"mkdir -p {q(str(site.deploy_to))}",
        f"ln -s {q(str(site.deploy_to / 'current'))} {q(str(site.current))}",
    ])


def leave_script(site: CapSite, owner: str, mode: str) -> str:
    """The normal setup again: no drop-in, current/ an empty directory, replicas started
    (pinned to what current.release names)."""
    units = " ".join(map(q, site.units))
    return "\n".join([
        "set -e",
        f"systemctl stop {units}",
        f"rm -f {q(str(site.dropin))}",
        "systemctl daemon-reload",
        f"if [ -L {q(str(site.current))} ]; then rm {q(str(site.current))}; fi",
        f"mkdir -p {q(str(site.current))}",
        f"chown {q(owner)} {q(str(site.current))}",
        f"chmod {q(mode)} {q(str(site.current))}",
        f"systemctl start {' '.join(map(q, site.started))}",
    ])


def cap_env(host: Host, site: CapSite, source: Path, release: str, log: Path
            ) -> dict[str, str]:
    """What bench/capistrano/config reads: where to deploy what, how to log in as root."""
    if not host.identity_file or not host.known_hosts:
        raise BenchError(f"{host.name}: the inventory names no identity_file/known_hosts")
    return {**os.environ, "CAP_HOST": host.address, "CAP_SSH_KEY": host.identity_file,
            "CAP_KNOWN_HOSTS": host.known_hosts, "CAP_SOURCE": str(source),
            "CAP_RELEASE": release, "CAP_DEPLOY_TO": str(site.deploy_to),
            "CAP_FPM_UNITS": " ".join(site.started), "CAP_LOG": str(log)}


def cap(env: dict[str, str], timeout: float = 300) -> Run:
    """`cap sandbox deploy` from bench/capistrano, timed from start to exit."""
    started = time.monotonic()
    try:
        proc = subprocess.run(["cap", "sandbox", "deploy"], cwd=CAPFILE_DIR, env=env,
                              capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"cap deploy did not finish within {timeout:g}s") from None
    return Run(("cap", "sandbox", "deploy"), proc.returncode, time.monotonic() - started,
               proc.stdout, proc.stderr)


def cap_version(output: str) -> str:
    """"Capistrano Version: 3.17.2 (Rake Version: 13.0.6)" -> "3.17.2"."""
    match = re.search(r"Capistrano Version: (\S+)", output)
    return match.group(1) if match else "?"


def installed_cap() -> str:
    proc = subprocess.run(["cap", "--version"], capture_output=True, text=True, check=False)
    return cap_version(proc.stdout)


def wait_serving(fleet: Fleet, release: str, timeout: float = 30) -> None:
    """Until 10 answers in a row (both replicas, most likely) name `release`."""
    target = stress.targets(fleet.hosts[:1], fleet.pools[0])[0]
    deadline, streak, last = time.monotonic() + timeout, 0, ""
    while streak < 10:
        if time.monotonic() > deadline:
            raise BenchError(f"{target.host} does not serve {release} (last answer {last!r})")
        try:
            status, body = stress.fetch(target, "/ping.php", 5)
            last = f"{status} {body.strip()[:60]}"
            streak = streak + 1 if status == 200 and stress.release_of(body) == release else 0
        except stress.FETCH_ERRORS as exc:
            last, streak = type(exc).__name__, 0
        if streak < 10:
            time.sleep(0.05)


class Bench:
    """The peer's host and its two setups; knows which one is in place."""

    def __init__(self, fleet: Fleet, say: Callable[[str], None]) -> None:
        self.fleet, self.say = fleet, say
        self.host, self.pool = fleet.hosts[0], fleet.pools[0]
        self.box: SandboxHost = sandbox_host(self.host)
        self.site = CapSite.of(self.host, self.pool)
        self.scratch = SANDBOX / "bench-peer"
        self.capistrano = False
        self.fab_serving = ""  # what fpm-fleet's current.release names (its last deploy)
        owner_mode = in_host(self.box, f"stat -c '%U:%G %a' {q(str(self.site.current))}")
        self.owner, self.mode = owner_mode.split()

    def build(self, release: str) -> Path:
        """The demo app named `release`, for Capistrano: the builder fpm-fleet's rounds use
        for the pool's source, so the same tree."""
        return demo.build(self.scratch / release, release)

    def fpm_fleet_setup(self, serving: str) -> None:
        """Back to fpm-fleet's pinned replicas: they serve what fpm-fleet's current.release
        names (its last deploy), not Capistrano's last release."""
        if self.capistrano:
            self.say("peer: back to the normal setup (pinned replicas)")
            in_host(self.box, leave_script(self.site, self.owner, self.mode), timeout=120)
            self.capistrano = False
        sandbox.healthy()
        wait_serving(self.fleet, self.fab_serving or serving)

    def capistrano_setup(self, serving: str) -> None:
        if self.capistrano:
            return
        self.say(f"peer: Capistrano's setup, seeded with {serving} (unmeasured)")
        # fpm-fleet's last round may still be retiring its old set on the host by itself
        # (rollout/retire.py): the switch waits for it, as any fpm-fleet rollout would
        lock = retire.lock_path(Layout.of(self.host, self.pool))
        in_host(self.box, f"[ ! -e {q(str(lock))} ] || flock -w 120 {q(str(lock))} true",
                timeout=130)
        states = in_host(self.box, "systemctl is-active "
                         + " ".join(map(q, self.site.units)) + "; true").split()
        self.site = CapSite.of(self.host, self.pool, tuple(
            unit for unit, state in zip(self.site.units, states, strict=False)
            if state == "active"))
        self.capistrano = True  # first: leave_script undoes a half-done switch too
        in_host(self.box, enter_script(self.site), timeout=120)
        self.build(serving)
        seed = self.deploy_cap(serving)
        if not seed.ok:
            raise BenchError(f"cap deploy (seed) exited {seed.code}:\n{seed.tail(20)}")
        in_host(self.box, "systemctl start " + " ".join(map(q, self.site.started)), timeout=60)
        wait_serving(self.fleet, serving)

    def deploy_cap(self, release: str) -> Run:
        """The release built by `build`, deployed by Capistrano."""
        env = cap_env(self.host, self.site, self.scratch / release, release,
                      self.scratch / "capistrano.log")
        return cap(env)

    @staticmethod
    def deploy_fab(release: str) -> Run:
        """The release in the pool's source, deployed by fpm-fleet the normal way."""
        return sandbox.fab("deploy", "--release", release, check=False)

    def restore(self) -> bool:
        """The normal setup, Capistrano's tree removed, `fab setup` + `fab status` clean."""
        if self.capistrano:
            in_host(self.box, leave_script(self.site, self.owner, self.mode), timeout=120)
            self.capistrano = False
        in_host(self.box, f"rm -rf {q(str(DEPLOY_ROOT))}")
        sandbox.fab("setup")
        sandbox.healthy()
        shutil.rmtree(self.scratch, ignore_errors=True)
        return True


def run(fleet: Fleet, profile: Profile, say: Callable[[str], None], result: Peer,
        serving: str) -> None:
    """`profile.rounds` deploys per tool, alternating; `result` fills in run by run.
    `serving` is the release the fleet runs when this begins."""
    bench = Bench(fleet, say)
    result.host, result.capistrano = bench.host.name, installed_cap()
    try:
        for n, tool in order(profile.rounds):
            release = f"peer-{tool}-{n}"
            say(f"peer {n}/{profile.rounds}: {TOOLS[tool]}, {serving} -> {release}")
            result.runs.append(one_run(bench, profile, tool, n, serving, release))
            serving = release
    finally:
        say("peer: restoring the host (normal setup, fab setup, fab status)")
        result.restored = bench.restore()


def one_run(bench: Bench, profile: Profile, tool: str, n: int, serving: str,
            release: str) -> PeerRun:
    if tool == "cap":
        bench.capistrano_setup(serving)
        bench.build(release)  # built before the window, as fpm-fleet's source is
        deploy = bench.deploy_cap
    else:
        bench.fpm_fleet_setup(serving)
        demo.build(Path(bench.pool.source), release)
        deploy = bench.deploy_fab
    window, ran = run_window(TOOLS[tool], bench.fleet, profile, lambda: deploy(release),
                             new_release=release)
    if tool != "cap" and ran.ok:
        bench.fab_serving = release
    window.round, window.action_ok = n, ran.ok
    window.action_detail = f"exit {ran.code} after {ran.seconds:.2f}s"
    return PeerRun(tool, n, release, ran.code, round(ran.seconds, 2), window,
                   "" if ran.ok else ran.tail(20))
