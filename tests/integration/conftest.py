"""The integration tests run fpm-fleet for real against a local fleet of Debian 12 hosts
booted with systemd (systemd-nspawn), each with Debian's own OpenSSH, Apache and PHP-FPM,
driven over SSH as the user `deploy`, whose sudo allows only the commands of fpm-fleet's
sudoers file (`fab setup` logs in as root to install it). Root is required.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fpm_fleet import stress
from fpm_fleet.core import inventory
from fpm_fleet.core.inventory import Fleet
from fpm_fleet.sandbox import hosts as sandbox

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))
SANDBOX = ROOT / "sandbox"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)




@pytest.fixture(scope="session", autouse=True)
def _exclusive_sandbox() -> Iterator[None]:
    """One local fleet per machine at a time: the tests, the benchmarks and a developer's
    sandbox all use the same namespaces and addresses, so they take turns on one lock."""
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces); run scripts/test as root")
    with sandbox.exclusive(wait=True):
        yield


def fab(*args: str, inventory_path: Path | None = SANDBOX / "hosts.toml", timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `fab` command line, as an operator would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CI", None)
    if inventory_path is not None:
        full_env["FABRIC_INVENTORY"] = str(inventory_path)
    return subprocess.run([FAB, *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@dataclass
class Sandbox:
    fleet: Fleet
    path: Path

    def addresses(self) -> list[str]:
        return [h.address for h in self.fleet.hosts]

    def host(self, host: int = 0) -> sandbox.SandboxHost:
        return sandbox.SandboxHost(host + 1)

    def remote_pool_dir(self, host: int = 0) -> Path:
        """The pool's directory as the host itself names it."""
        h = self.fleet.hosts[host]
        return Path(h.pool_dir(self.fleet.pools[0]))

    def pool_dir(self, host: int = 0) -> Path:
        """The same directory seen from this machine (through the host's root filesystem)."""
        return self.on_host(self.remote_pool_dir(host), host)

    def on_host(self, path: Path | str, host: int = 0) -> Path:
        return self.host(host).root / str(path).lstrip("/")

    def as_deploy(self, path: Path, host: int = 0) -> None:
        """Hand files a test made as root (from outside) to the deploy user, as if a run of
        fpm-fleet had made them: the deploy user owns releases/ and state/, not root."""
        owner = (self.pool_dir(host) / "releases").stat()
        for p in [path, *(path.rglob("*") if path.is_dir() and not path.is_symlink() else [])]:
            os.lchown(p, owner.st_uid, owner.st_gid)

    def slow_fcgi_request(self, host: int, n: int, ms: int) -> subprocess.Popen[str]:
        """A slow request straight to one replica's socket, from inside the host (as
        Apache's would be), running in the background."""
        pool_dir = self.remote_pool_dir(host)
        env = ["REQUEST_METHOD=GET", "SCRIPT_NAME=/sleep.php", f"QUERY_STRING=ms={ms}",
               f"SCRIPT_FILENAME={pool_dir / 'current' / 'sleep.php'}"]
        pid = str(sandbox.leader(self.host(host)))
        return subprocess.Popen(["nsenter", "-t", pid, "-a", "--", "env", "-i", *env,
                                 "cgi-fcgi", "-bind", "-connect",
                                 str(pool_dir / "run" / f"www-{n}.sock")],
                                stdout=subprocess.PIPE, text=True)

    def master_pid(self, host: int, n: int) -> str:
        """Replica n's master as its pid file names it ("" between two masters)."""
        try:
            return (self.pool_dir(host) / "run" / f"www-{n}.pid").read_text().strip()
        except OSError:
            return ""

    def run(self, host: int, *argv: str, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """A command run on the host as its root (as an administrator logged in there)."""
        return sandbox.run_in(self.host(host), *argv, timeout=timeout)

    def status(self, *args: str) -> list[dict[str, Any]]:
        proc = fab("status", "--json", *args)
        rows: list[dict[str, Any]] = json.loads(proc.stdout)
        return rows

    def settled(self, timeout: float = 30) -> list[dict[str, Any]]:
        """Status once no host still retires a surge's old set (the hosts do it by themselves
        after `fab deploy` returns); bounded."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.status()
            if not any(r["role"] == "retiring" for r in rows):
                return rows
            assert time.monotonic() < deadline, f"still retiring after {timeout}s: {rows}"
            time.sleep(0.2)

    def build(self, release: str, unhealthy: bool = False, files: int = 0) -> None:
        args = ["sandbox.build", "--release", release, "--files", str(files)]
        ok(fab(*args, *(["--unhealthy"] if unhealthy else [])))


@dataclass(frozen=True)
class WebHost:
    """One host of a mixed fleet, picked by its web server."""

    web: str  # "apache" or "nginx", as the inventory and `fab status` name it
    index: int  # for the Sandbox methods that take a host
    name: str
    address: str


# What `fab status` shows for a member in rotation: Apache's balancer-manager says Init Ok,
# nginx's upstream (web/upstream.py) just Ok
IN_ROTATION = {"apache": "Init Ok", "nginx": "Ok"}


def in_rotation(row: dict[str, Any]) -> bool:
    return bool(row["lb_status"] == IN_ROTATION[row["web"]])


@pytest.fixture(params=sorted(IN_ROTATION))
def web_host(request: pytest.FixtureRequest, box: Sandbox) -> WebHost:
    """The first host of the module's fleet (`box`, a mixed one) that runs the parameter's
    web server: a test that addresses one host runs once on each web server, without a
    copy, on one fleet."""
    for i, h in enumerate(box.fleet.hosts):
        if h.web == request.param:
            return WebHost(h.web, i, h.name, h.address)
    raise AssertionError(f"the fleet has no {request.param} host: bring it up with web=mixed")


def bring_up(hosts: int, strategy: str = "rolling", web: str = "apache") -> Sandbox:
    """A fresh fleet of `hosts`; rolling unless said (most tests were written for it; the
    surge strategy has its own module); Apache unless said (`nginx`, or `mixed`: Apache and
    nginx hosts in turn)."""
    fab("sandbox.down", inventory_path=None)
    ok(fab("sandbox.up", "--hosts", str(hosts), "--strategy", strategy, "--web", web,
           inventory_path=None))
    path = SANDBOX / "hosts.toml"
    return Sandbox(inventory.load(path), path)


def tear_down() -> list[str]:
    ok(fab("sandbox.down", inventory_path=None))
    return sandbox.leftovers_after(SANDBOX)


@pytest.fixture(scope="module")
def fleet2() -> Iterator[Sandbox]:
    box = bring_up(2)
    yield box
    assert tear_down() == []


@pytest.fixture(scope="module")
def fleet3() -> Iterator[Sandbox]:
    box = bring_up(3)
    yield box
    assert tear_down() == []


@pytest.fixture(scope="module")
def mixed2() -> Iterator[Sandbox]:
    """Two rolling hosts, h1 served by Apache, h2 by nginx (see `web_host`)."""
    box = bring_up(2, web="mixed")
    yield box
    assert tear_down() == []


@pytest.fixture(scope="module")
def mixed3() -> Iterator[Sandbox]:
    """Three rolling hosts, h2 served by nginx, h1 and h3 by Apache: a suite run on it runs
    for both web servers at the cost of one fleet."""
    box = bring_up(3, web="mixed")
    yield box
    assert tear_down() == []


@pytest.fixture(scope="module")
def surge3() -> Iterator[Sandbox]:
    box = bring_up(3, "surge")
    yield box
    assert tear_down() == []


def with_pool(box: Sandbox, toml: str, directory: Path) -> Path:
    """The sandbox's inventory plus a pool of the test's own (`toml`), set up on the hosts."""
    path = directory / "hosts.toml"
    path.write_text(box.path.read_text() + toml)
    ok(fab("setup", inventory_path=path))
    return path


def get(address: str, path: str, timeout: float = 10) -> tuple[int, str]:
    conn = http.client.HTTPConnection(address, 80, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


@contextmanager
def load(box: Sandbox, slow_ms: int = 2000, hosts: list[str] | None = None
         ) -> Iterator[list[stress.HostStats]]:
    """fab-stress-like load on the sandbox while the block runs; stats filled in at the end.

    Bounded: at most 100,000 requests per host, and it stops with the block.
    """
    targets = stress.targets(h for h in box.fleet.hosts if hosts is None or h.name in hosts)
    runner = stress.Stress(targets, slow_ms=slow_ms, max_requests=100_000,
                           loops=stress.demo_loops(fast=2, slow=2, slow_ms=slow_ms,
                                                   atomic=1)).start()
    stats: list[stress.HostStats] = []
    time.sleep(1.0)  # slow requests are in flight before anything happens
    try:
        yield stats
    finally:
        time.sleep(0.5)
        stats.extend(runner.stop())


def assert_no_failures(stats: list[stress.HostStats]) -> None:
    assert stats, "no load ran"
    for st in stats:
        assert st.requests > 0, f"{st.host}: no requests"
        assert st.failures == 0, f"{st.host}: {st.failures} failed: {st.reasons}"


class Background:
    """A `fab` command running in the background whose progress lines can be waited for."""

    def __init__(self, *args: str, inventory_path: Path = SANDBOX / "hosts.toml") -> None:
        env = {**os.environ, "FABRIC_INVENTORY": str(inventory_path)}
        env.pop("CI", None)
        self.proc = subprocess.Popen([FAB, *args], cwd=ROOT, env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.stdout = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"never saw {text!r}:\n{''.join(self.lines)}")
            time.sleep(0.01)

    def finish(self, timeout: float = 300) -> tuple[int, str, str]:
        """Exit code, stdout, stderr (stderr is read only by our thread: never split)."""
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return self.proc.returncode, out, "".join(self.lines)


def slept_in_full(answer: str, ms: int) -> bool:
    """A sleep.php answer whose sleep was not cut short (by a signal to its worker)."""
    slept = re.search(r"slept (\d+)ms", answer)
    return slept is not None and int(slept.group(1)) >= ms
