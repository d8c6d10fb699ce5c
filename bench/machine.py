"""The facts a benchmark result is meaningless without: machine, kernel, versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from .sandbox import ROOT


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
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "tasks",
                            "templates"], capture_output=True, text=True, check=False).stdout
    return rev + (" (tasks/ or templates/ modified)" if dirty.strip() else "")


def facts() -> dict[str, str]:
    debian = Path("/etc/debian_version")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpus": str(os.cpu_count()),
        "memory": f"{_memory_gib()} GiB",
        "kernel": platform.release(),
        "debian": debian.read_text().strip() if debian.exists() else "?",
        "apache": _first_line(["apache2", "-v"]).removeprefix("Server version: "),
        "php_fpm": _first_line(["php-fpm8.2", "-v"]),
        "openssh": _first_line(["ssh", "-V"]),
        "python": platform.python_version(),
        "commit": _commit(),
    }
