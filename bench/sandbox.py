"""The local test fleet, driven as an operator drives it: the real `fab` command line.

Its hosts are systemd-nspawn containers (Debian 12, systemd as PID 1): each has its own
filesystem (seen from here under `SandboxHost.root`) and its own PID namespace, so a pid
read on a host means something only inside that host (`in_host`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fpm_fleet.core import inventory
from fpm_fleet.core.inventory import Fleet, Host
from fpm_fleet.sandbox import hosts as sandbox_hosts
from fpm_fleet.sandbox.hosts import SandboxHost

from .errors import BenchError

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "sandbox"
INVENTORY = SANDBOX / "hosts.toml"
FAB = str(Path(sys.executable).with_name("fab"))
FIRST_RELEASE = "v1"  # what `fab sandbox.up` deploys


@dataclass(frozen=True)
class Run:
    """One finished `fab` command and how long it took, wall clock."""

    args: tuple[str, ...]
    code: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    def tail(self, lines: int = 10) -> str:
        return "\n".join((self.stdout + self.stderr).strip().splitlines()[-lines:])


def fab(*args: str, check: bool = True, timeout: float = 600) -> Run:
    """Run `fab ARGS` against the sandbox inventory; raise BenchError on failure if `check`."""
    env = {**os.environ, "FABRIC_INVENTORY": str(INVENTORY)}
    started = time.monotonic()
    try:
        proc = subprocess.run([FAB, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"fab {' '.join(args)} did not finish within {timeout:g}s") from None
    run = Run(tuple(args), proc.returncode, time.monotonic() - started, proc.stdout,
              proc.stderr)
    if check and not run.ok:
        raise BenchError(f"fab {' '.join(args)} exited {run.code}:\n{run.tail()}")
    return run


@dataclass(frozen=True)
class Up:
    """A fresh fleet and what bringing it up cost: the whole `fab sandbox.up`, the boot of
    its hosts (as `sandbox.up` reports it) and the base tree build, when one was needed."""

    fleet: Fleet
    seconds: float
    boot_s: float | None
    base_build_s: float | None


BOOTED = re.compile(r"\b(\d+) hosts booted in (\d+(?:\.\d+)?)s")
BASE_BUILT = re.compile(r"built the hosts' base tree in (\d+(?:\.\d+)?)s")


def reported_seconds(pattern: re.Pattern[str], stderr: str, group: int = 1) -> float | None:
    """A duration `fab sandbox.up` printed on stderr, or None when it did not print it."""
    m = pattern.search(stderr)
    return float(m.group(group)) if m else None


def up(hosts: int, strategy: str = "surge", web: str = "apache") -> Up:
    """A fresh sandbox of `hosts` hosts (whatever was up before is removed first), its pool
    on `strategy`, its hosts' web server `web`."""
    down()
    run = fab("sandbox.up", "--hosts", str(hosts), "--strategy", strategy, "--web", web)
    return Up(inventory.load(INVENTORY), run.seconds, reported_seconds(BOOTED, run.stderr, 2),
              reported_seconds(BASE_BUILT, run.stderr))


def keep_previous(on: bool) -> None:
    """Turn the sandbox pool's keep_previous on or off in its inventory (it changes nothing
    `fab setup` renders)."""
    text = INVENTORY.read_text().replace("keep_previous = true\n", "")
    if on:
        text = text.replace('strategy = "surge"\n', 'strategy = "surge"\nkeep_previous = true\n')
    INVENTORY.write_text(text)


def down(timeout: float = 10) -> None:
    """Remove the sandbox and check that nothing of it is left (processes die late)."""
    fab("sandbox.down", check=False)
    left = sandbox_hosts.leftovers_after(SANDBOX, timeout)
    if left:
        raise BenchError("sandbox.down left behind: " + "; ".join(left))


def healthy(timeout: float = 20) -> float:
    """Wait until `fab status` says every replica is OK; returns the seconds waited."""
    started = time.monotonic()
    while True:
        run = fab("status", "-q", check=False)
        if run.ok:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchError(f"fleet not healthy after {timeout:g}s:\n{run.tail()}")
        time.sleep(0.5)


def sandbox_host(host: Host) -> SandboxHost:
    """The container behind an inventory host (matched by address)."""
    for box in sandbox_hosts.existing_hosts():
        if box.address == host.address:
            return box
    raise BenchError(f"{host.name} ({host.address}) is not a host of the local fleet")


def on_host(box: SandboxHost, path: PurePosixPath) -> Path:
    """A file of the host, as this machine sees it through the host's root filesystem."""
    return box.root / str(path).lstrip("/")


def in_host(box: SandboxHost, command: str, timeout: float = 30) -> str:
    """Run a shell command inside the host as its root; its stdout, or BenchError."""
    proc = sandbox_hosts.run_in(box, "sh", "-c", command, timeout=timeout)
    if proc.returncode != 0:
        raise BenchError(f"{box.name}: {command[:80]!r} exited {proc.returncode}: "
                         f"{proc.stderr.strip()[-300:]}")
    return proc.stdout
