"""The usual alternative to a rolling restart: `kill -USR2` to every PHP-FPM master at once.

PHP-FPM re-executes itself on USR2; with daemonize = yes the new master forks, so it gets a
new pid and rewrites the pid file. The re-executed master stays in the replica's private
mount namespace, so it keeps its pinned release. The reload is over when every pid file
names a new, live master.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from tasks.inventory import Fleet
from tasks.layout import Layout

from .errors import BenchError

MASTER_TITLE = "php-fpm: master process"


@dataclass(frozen=True)
class Reload:
    replicas: int
    seconds: float
    complete: bool

    @property
    def detail(self) -> str:
        state = "all masters replaced" if self.complete else "NOT all masters replaced"
        return f"{self.replicas} masters signalled; {state} after {self.seconds:.2f}s"


def pid_files(fleet: Fleet) -> list[Path]:
    return [Path(str(Layout.of(h, p).pid(n)))
            for h in fleet.hosts for p in fleet.pools for n in p.replica_numbers]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def is_master(pid: int) -> bool:
    """A live (not zombie) process whose title says it is an FPM master."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        state = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text()
                     .splitlines() if line.startswith("State:"))
    except (OSError, StopIteration, IndexError):
        return False
    return title.startswith(MASTER_TITLE) and state not in ("Z", "X")


def masters(fleet: Fleet) -> dict[Path, int]:
    found: dict[Path, int] = {}
    for path in pid_files(fleet):
        pid = read_pid(path)
        if pid is None or not is_master(pid):
            raise BenchError(f"{path}: no running PHP-FPM master to reload")
        found[path] = pid
    return found


def reload_all(fleet: Fleet, timeout: float = 30) -> Reload:
    """USR2 to every replica master, then wait until each pid file names a new master."""
    old = masters(fleet)
    started = time.monotonic()
    for pid in old.values():
        os.kill(pid, signal.SIGUSR2)
    pending = dict(old)
    while pending and time.monotonic() - started < timeout:
        for path, pid in list(pending.items()):
            new = read_pid(path)
            if new is not None and new != pid and is_master(new):
                del pending[path]
        time.sleep(0.01)
    return Reload(len(old), round(time.monotonic() - started, 2), not pending)
