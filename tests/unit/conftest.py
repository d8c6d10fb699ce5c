"""Shared fixtures for the unit tests: inventories, fleets, layouts, and a local shell.

The command builders are pure, but the strings they build are meant to run in a POSIX
shell; `sh` (dash here, as on Debian hosts) runs them for real inside tmp_path, which is
the closest a unit test gets to a host without SSH.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

import pytest

from tasks import inventory
from tasks.errors import ConfigError, RemoteError, RemoteResult
from tasks.inventory import Fleet, Host
from tasks.layout import Layout

BASE_INVENTORY: dict[str, Any] = {
    "defaults": {"user": "root", "apache": {"mode": "system"}},
    "hosts": [
        {"name": "web1", "address": "198.18.0.11"},
        {"name": "web2", "address": "198.18.0.12"},
    ],
    "pools": {"www": {"replicas": 2}},
}


@pytest.fixture
def inventory_data() -> dict[str, Any]:
    """A fresh, valid inventory dict (as tomllib would return it) for each test to bend."""
    return copy.deepcopy(BASE_INVENTORY)


@pytest.fixture
def build_fleet() -> Callable[..., Fleet]:
    def build(data: Mapping[str, Any], path: str = "hosts.toml") -> Fleet:
        return inventory.parse(data, path)
    return build


@pytest.fixture
def config_error() -> Callable[..., str]:
    """Parse `data`, expect a ConfigError, return its message."""
    def fail(data: Mapping[str, Any], path: str = "etc/hosts.toml") -> str:
        with pytest.raises(ConfigError) as info:
            inventory.parse(data, path)
        return str(info.value)
    return fail


def run_sh(command: str, cwd: Path, stdin: bytes | None = None,
           timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """Run one built command the way a host would: `sh -c`, in `cwd`."""
    proc = subprocess.run(["sh", "-c", command], cwd=cwd, input=stdin, capture_output=True,
                          timeout=timeout, check=False)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


@pytest.fixture
def sh(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(command: str, stdin: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_sh(command, cwd or tmp_path, stdin)
    return run


class LocalExecutor:
    """The Executor protocol, run on this machine with `sh -c` (no SSH, no sudo)."""

    def __init__(self, host: Host, cwd: Path) -> None:
        self.host = host
        self.cwd = cwd
        self.commands: list[str] = []

    def run(self, command: str, what: str, *, check: bool = True,
            timeout: float | None = None) -> RemoteResult:
        self.commands.append(command)
        proc = run_sh(command, self.cwd, timeout=timeout or 30)
        result = RemoteResult(command, proc.returncode, proc.stdout, proc.stderr)
        if check and not result.ok:
            raise RemoteError(self.host.name, what, result)
        return result

    def stream(self, command: str, what: str, source: IO[bytes], *,
               timeout: float | None = None) -> tuple[RemoteResult, int]:
        self.commands.append(command)
        data = source.read()
        proc = run_sh(command, self.cwd, stdin=data, timeout=timeout or 30)
        result = RemoteResult(command, proc.returncode, proc.stdout, proc.stderr)
        if not result.ok:
            raise RemoteError(self.host.name, what, result)
        return result, len(data)


@pytest.fixture
def local_fleet(tmp_path: Path, inventory_data: dict[str, Any]) -> Fleet:
    """A one-host fleet whose host root is a directory under tmp_path."""
    inventory_data["hosts"] = [{"name": "local", "address": "127.0.0.1",
                                "root": str(tmp_path / "srv")}]
    return inventory.parse(inventory_data)


@pytest.fixture
def local_ex(local_fleet: Fleet, tmp_path: Path) -> LocalExecutor:
    host = local_fleet.hosts[0]
    layout = Layout.of(host, local_fleet.pools[0])
    for d in layout.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    return LocalExecutor(host, tmp_path)


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A pool layout under tmp_path with every directory created."""
    lay = Layout(dir=PurePosixPath(tmp_path / "srv" / "www"), pool="www")
    for d in lay.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    return lay


@pytest.fixture
def evil_layout(tmp_path: Path) -> Layout:
    """A layout whose path holds spaces, quotes and command substitutions.

    If any builder forgets to quote, running its command creates a file named `pwned`.
    """
    evil = tmp_path / "a b;$(touch pwned)`touch pwned`'\"x" / "www"
    lay = Layout(dir=PurePosixPath(evil), pool="www")
    for d in lay.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    return lay


@pytest.fixture
def pwned(tmp_path: Path) -> Callable[[], list[Path]]:
    """Files an injected `touch pwned` would have created anywhere under tmp_path."""
    return lambda: list(tmp_path.rglob("pwned"))


@pytest.fixture
def web(inventory_data, build_fleet):
    """The first host and the www pool of the standard inventory."""
    fleet = build_fleet(inventory_data)
    return fleet.hosts[0], fleet.pool("www")
