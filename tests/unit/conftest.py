"""Shared fixtures for the unit tests: inventories, fleets, layouts, and a local shell.

The command builders are pure, but the strings they build are meant to run in a POSIX
shell; `sh` (dash here, as on Debian hosts) runs them for real inside tmp_path, which is
the closest a unit test gets to a host without SSH. `fake_systemd` puts stand-ins for
systemctl, journalctl and ps first on PATH, so commands that drive services run too.
"""

from __future__ import annotations

import copy
import os
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

import pytest

from fpm_fleet.core import inventory
from fpm_fleet.core.errors import ConfigError, RemoteError, RemoteResult
from fpm_fleet.core.inventory import Fleet, Host
from fpm_fleet.host.layout import Layout
from fpm_fleet.remote.command import Command
from fpm_fleet.remote.runner import ask_by_running

T = TypeVar("T")

BASE_INVENTORY: dict[str, Any] = {
    "defaults": {"user": "root", "apache": {"mode": "system"}},
    "hosts": [
        {"name": "web1", "address": "198.18.0.11"},
        {"name": "web2", "address": "198.18.0.12"},
    ],
    "pools": {"www": {"replicas": 2, "strategy": "rolling"}},
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


def run_sh(command: str, cwd: Path, stdin: bytes | None = None, timeout: float = 15,
           path_first: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run one built command the way a host would: `sh -c`, in `cwd` (with `path_first`
    searched before the real PATH)."""
    env = None
    if path_first is not None:
        env = {**os.environ, "PATH": f"{path_first}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", command], cwd=cwd, input=stdin, capture_output=True,
                          timeout=timeout, check=False, env=env)
    return subprocess.CompletedProcess(proc.args, proc.returncode,
                                       proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


@pytest.fixture
def sh(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    def run(command: str, stdin: bytes | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run_sh(command, cwd or tmp_path, stdin)
    return run


FAKE_SYSTEMCTL = r"""#!/bin/sh
# Stand-in systemctl: a unit's state, MainPID, Result and enablement are files in $state.
state=@STATE@
printf 'systemctl %s\n' "$*" >> "$state/calls"
for unit; do :; done
case $1 in
  is-active)
    shift; quiet=; [ "$1" != --quiet ] || { quiet=1; shift; }
    all=0  # one line per unit, in order; exit 0 only if every unit is active
    for u; do
      s=$(cat -- "$state/$u.state" 2>/dev/null || echo inactive)
      [ -n "$quiet" ] || printf '%s\n' "$s"
      [ "$s" = active ] || [ "$s" = reloading ] || all=3
    done
    exit $all;;
  is-enabled) [ -e "$state/$unit.enabled" ];;
  enable) : > "$state/$unit.enabled";;
  disable) rm -f -- "$state/$unit.enabled";;
  show)
    cat -- "$state/$unit.$3" 2>/dev/null || { [ "$3" = MainPID ] && echo 0 || echo success; };;
  start)
    [ ! -e "$state/$unit.start-fails" ] || exit 1
    if [ -e "$state/$unit.start-limit" ]; then
      echo start-limit-hit > "$state/$unit.Result"; exit 1
    fi
    echo active > "$state/$unit.state";;
  reset-failed) rm -f -- "$state/$unit.start-limit"; echo success > "$state/$unit.Result";;
  stop)
    echo inactive > "$state/$unit.state"; echo 0 > "$state/$unit.MainPID"
    [ ! -e "$state/$unit.stop-result" ] || cp -- "$state/$unit.stop-result" "$state/$unit.Result";;
esac
"""

FAKE_JOURNALCTL = r"""#!/bin/sh
state=@STATE@
printf 'journalctl %s\n' "$*" >> "$state/calls"
cat -- "$state/journal" 2>/dev/null
"""

FAKE_PS = r"""#!/bin/sh
# Stand-in ps: the process table (`pid ppid args` lines) and each pid's age are files in $state.
state=@STATE@
case "$*" in
  "-eo pid=,ppid=,args=") cat -- "$state/ps" 2>/dev/null;;
  "-o pid=,stat=,etimes=,args= -p "*)
    # per pid of the comma list: the state and title of the real process (the tests start
    # stand-in masters), the age from $state; exit 1 when one is gone, as ps does. PHP-FPM
    # writes its title over its whole command line, so ps shows the title alone; a
    # stand-in (`exec -a TITLE sleep N`) keeps its argument: its first field
    rc=0
    for pid in $(echo "$4" | tr , ' '); do
      s=$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$pid/status" 2>/dev/null)
      [ -n "$s" ] || { rc=1; continue; }
      printf '%7s %ss %s %s\n' "$pid" "$s" \
        "$(tr -d ' ' < "$state/etimes.$pid" 2>/dev/null || echo -)" \
        "$(tr '\0' '\n' < "/proc/$pid/cmdline" | head -n 1)"
    done
    exit $rc;;
  *) echo "fake ps: unexpected arguments: $*" >&2; exit 2;;
esac
"""


class FakeSystemd:
    """What the fake systemctl, journalctl and ps answer, and what systemctl was asked."""

    def __init__(self, root: Path) -> None:
        self.cwd = root
        self.bin = root / "fake-bin"
        self.state = root / "fake-state"
        self.bin.mkdir()
        self.state.mkdir()
        for name, script in (("systemctl", FAKE_SYSTEMCTL), ("journalctl", FAKE_JOURNALCTL),
                             ("ps", FAKE_PS)):
            tool = self.bin / name
            tool.write_text(script.replace("@STATE@", shlex.quote(str(self.state))))
            tool.chmod(0o755)

    def unit(self, name: str, state: str = "inactive", main_pid: int = 0,
             result: str = "success", enabled: bool = False) -> None:
        (self.state / f"{name}.state").write_text(f"{state}\n")
        (self.state / f"{name}.MainPID").write_text(f"{main_pid}\n")
        (self.state / f"{name}.Result").write_text(f"{result}\n")
        if enabled:
            (self.state / f"{name}.enabled").touch()

    def on_stop(self, name: str, result: str) -> None:
        """The Result systemd reports once `systemctl stop` returns (`timeout`: SIGKILL)."""
        (self.state / f"{name}.stop-result").write_text(f"{result}\n")

    def start_limit_hit(self, name: str) -> None:
        """systemd refuses to start `name` until its start limit is reset (reset-failed)."""
        (self.state / f"{name}.start-limit").touch()

    def start_fails(self, name: str, journal: str) -> None:
        (self.state / f"{name}.start-fails").touch()
        (self.state / "journal").write_text(journal)

    def processes(self, *table: tuple[int, str]) -> None:
        """The process table as `ps -eo pid=,ppid=,args=` prints it, from (parent pid, title)
        pairs; the processes get made-up pids (nothing here signals them)."""
        (self.state / "ps").write_text("".join(f"{pid:>7} {ppid:>7} {args}\n" for pid, (ppid, args)
                                               in enumerate(table, start=90001)))

    def age(self, pid: int, seconds: int) -> None:
        (self.state / f"etimes.{pid}").write_text(f"{seconds:>7}\n")

    def state_of(self, name: str) -> str:
        return (self.state / f"{name}.state").read_text().strip()

    def enabled(self, name: str) -> bool:
        return (self.state / f"{name}.enabled").exists()

    def calls(self) -> list[str]:
        """Every systemctl and journalctl command line, in order."""
        path = self.state / "calls"
        return path.read_text().splitlines() if path.exists() else []

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        return run_sh(command, self.cwd, path_first=self.bin)


@pytest.fixture
def fake_systemd(tmp_path: Path) -> FakeSystemd:
    return FakeSystemd(tmp_path)


@pytest.fixture
def masters() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stand-in php-fpm processes (masters, workers: a command renamed with exec -a) that a
    test appends; killed and reaped at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


class LocalRunner:
    """The Runner protocol, run on this machine with `sh -c` (no SSH, no sudo): the "real
    shell" runner (the scripted one is fakes.FakeRunner)."""

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

    def ask(self, cmd: Command[T]) -> T:
        return ask_by_running(self, cmd)


@pytest.fixture
def local_fleet(tmp_path: Path, inventory_data: dict[str, Any]) -> Fleet:
    """A one-host fleet whose host root is a directory under tmp_path."""
    inventory_data["hosts"] = [{"name": "local", "address": "127.0.0.1",
                                "root": str(tmp_path / "srv")}]
    return inventory.parse(inventory_data)


@pytest.fixture
def local_runner(local_fleet: Fleet, tmp_path: Path) -> LocalRunner:
    host = local_fleet.hosts[0]
    layout = Layout.of(host, local_fleet.pools[0])
    for d in layout.directories():
        Path(d).mkdir(parents=True, exist_ok=True)
    return LocalRunner(host, tmp_path)


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


@pytest.fixture
def three_slow_hosts(inventory_data: dict[str, Any], build_fleet: Callable[..., Fleet],
                     monkeypatch: pytest.MonkeyPatch) -> tuple[Fleet, dict[str, Any], Any]:
    """Three hosts, each a simulated pool whose every command takes a little time, as over
    SSH (interrupts then land mid-rollout); returns the fleet, its fakes by host name and
    the selection of everything."""
    from fakes import FakePool, FakeRunner

    from fpm_fleet.core.selection import Selection

    monkeypatch.setattr("fpm_fleet.rollout.replica.POLL", 0)
    inventory_data["hosts"].append({"name": "web3", "address": "198.18.0.13"})
    fleet = build_fleet(inventory_data)
    fakes = {h.name: FakePool(h, fleet.pools[0], runner=FakeRunner(h, delay=0.03))
             for h in fleet.hosts}
    return fleet, fakes, Selection(fleet.hosts, fleet.pools)
