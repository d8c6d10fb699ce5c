"""The local test fleet, driven as an operator drives it: the real `fab` command line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tasks import inventory
from tasks import sandbox as tasks_sandbox
from tasks.inventory import Fleet

from .errors import BenchError

ROOT = Path(__file__).resolve().parent.parent
SANDBOX = ROOT / "sandbox"
INVENTORY = SANDBOX / "hosts.toml"
FAB = str(Path(sys.executable).with_name("fab"))


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


def up(hosts: int) -> tuple[Fleet, float]:
    """A fresh sandbox of `hosts` hosts; returns its inventory and the `sandbox.up` time."""
    down()
    run = fab("sandbox.up", "--hosts", str(hosts))
    return inventory.load(INVENTORY), run.seconds


def down(timeout: float = 10) -> None:
    """Remove the sandbox and check that nothing of it is left (processes die late)."""
    fab("sandbox.down", check=False)
    deadline = time.monotonic() + timeout
    left = tasks_sandbox.leftovers(SANDBOX)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = tasks_sandbox.leftovers(SANDBOX)
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
