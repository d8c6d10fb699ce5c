"""The facts a benchmark result is meaningless without: machine, kernel, versions, commit.

The fleet's software is that of its hosts, not of this machine: Debian's packages in the
hosts' base tree (every host is an overlay of it), read from that tree's dpkg database.
"""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fpm_fleet.sandbox.base import BASE_DIR

from .sandbox import ROOT

HOST_PACKAGES = {"apache": "apache2", "nginx": "nginx", "php_fpm": "php8.2-fpm",
                 "openssh_server": "openssh-server", "systemd": "systemd"}


def _first_line(argv: list[str]) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    return ((proc.stdout or proc.stderr).strip().splitlines() or ["?"])[0]


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    return 0.0


def _commit() -> str:
    rev = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "fpm_fleet",
                            "tasks", "templates"], capture_output=True, text=True,
                           check=False).stdout
    return rev + (" (fpm_fleet/, tasks/ or templates/ modified)" if dirty.strip() else "")


def _debian(root: Path) -> str:
    path = root / "etc" / "debian_version"
    return path.read_text().strip() if path.exists() else "?"


def host_package(package: str, base: Path = BASE_DIR) -> str:
    """The version of a Debian package installed in the hosts' base tree."""
    return _first_line(["dpkg-query", f"--admindir={base / 'var/lib/dpkg'}", "-W",
                        "-f=${Version}", package])


def cpu_seconds() -> float:
    """CPU time this machine has spent so far, all processes (user, nice, system, irq,
    softirq, steal; not idle or iowait), from /proc/stat: the fleet's hosts are this
    machine's processes, so a difference of two readings is what a command cost them all."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def facts() -> dict[str, str]:
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": str(os.cpu_count()),
        "memory": f"{_memory_gib()} GiB",
        "kernel": platform.release(),
        "debian": _debian(Path("/")),
        "hosts": f"systemd-nspawn containers ({_first_line(['systemd-nspawn', '--version'])}), "
                 f"Debian {_debian(BASE_DIR)}",
        **{f"host_{k}": host_package(v) for k, v in HOST_PACKAGES.items()},
        "openssh_client": _first_line(["ssh", "-V"]),
        "python": platform.python_version(),
        "commit": _commit(),
    }


@contextmanager
def load_samples(every: float = 10.0) -> Iterator[list[float]]:
    """This machine's 1-minute load average, every `every` seconds while the block runs
    (first sample at once). The fleet, the load generator and `fab` share this machine's
    CPUs with whatever else runs on it; the samples say how busy it was."""
    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while True:
            samples.append(round(os.getloadavg()[0], 2))
            if stop.wait(every):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(timeout=5)
