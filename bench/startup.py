"""`.venv/bin/python -m bench.startup [--runs N] [CHECKOUT ...]`: how long `fab` takes to
start, in this checkout or side by side in several (each with its own .venv, as
scripts/install makes it); no fleet is needed.

Median and minimum of N runs of: the interpreter alone (site and the venv's .pth files), `import
fabric.main, fabfile`, `-X importtime`'s figures for `site` and for `fabfile` (all that
fpm-fleet's modules add to Fabric's), `fab --list`, and a one-host `fab deploy` until its
first SSH connection: a loopback listener stands for the host, notes when it is reached and
closes the connection, so the deploy ends right there and touches nothing. The checkouts
take turns within each run, so a busy machine weighs on all of them alike.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INVENTORY = """\
log_dir = "logs"

[[hosts]]
name = "h1"
address = "127.0.0.1"
port = {port}
connect_timeout = 5

[pools.www]
replicas = 2
source = "app"
"""


def python(checkout: Path) -> str:
    return str(checkout / ".venv" / "bin" / "python")


def fab(checkout: Path) -> str:
    return str(checkout / ".venv" / "bin" / "fab")


def wall(argv: list[str], cwd: Path) -> float:
    """Seconds from starting `argv` to its exit."""
    start = time.monotonic()
    subprocess.run(argv, cwd=cwd, capture_output=True, check=True, timeout=60)
    return time.monotonic() - start


def cpu(argv: list[str], cwd: Path) -> float:
    """CPU seconds (user and system) `argv` used: on a busy machine, steadier than wall."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, cwd=cwd, capture_output=True, check=True, timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def import_ms(checkout: Path, module: str) -> float:
    """Milliseconds `-X importtime` counts for `module` and what it imports, in `import
    fabric.main, fabfile`."""
    proc = subprocess.run([python(checkout), "-X", "importtime", "-c",
                           "import fabric.main, fabfile"],
                          cwd=checkout, capture_output=True, text=True, check=True, timeout=60)
    found = re.search(rf"^import time:\s+\d+ \|\s+(\d+) \| {re.escape(module)}$",
                      proc.stderr, re.MULTILINE)
    return int(found.group(1)) / 1000 if found else 0.0


def cpu_so_far(pid: int) -> float:
    """CPU seconds a running process has used so far, all its threads (Linux schedstat)."""
    return sum(int(stat.read_text().split()[0])
               for stat in Path(f"/proc/{pid}/task").glob("*/schedstat")) / 1e9


def first_connection(checkout: Path, work: Path) -> tuple[float, float]:
    """Seconds from starting `fab deploy --plain` to its first SSH connection, and the CPU
    seconds it used until then."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(30)
        inventory = work / "hosts.toml"
        inventory.write_text(INVENTORY.format(port=listener.getsockname()[1]))
        start = time.monotonic()
        proc = subprocess.Popen([fab(checkout), "deploy", "--plain", "--release", "r1"],
                                cwd=checkout,
                                env={**os.environ, "FABRIC_INVENTORY": str(inventory)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            conn, _ = listener.accept()
            reached = time.monotonic() - start
            used = cpu_so_far(proc.pid)
            conn.close()
        finally:
            proc.wait(timeout=30)
    return reached, used


Measure = Callable[[Path, Path], float]  # (checkout, scratch directory) -> milliseconds

MEASURES: dict[str, Measure] = {
    "python -c pass": lambda c, _: 1000 * wall([python(c), "-c", "pass"], c),
    "python -c pass, CPU": lambda c, _: 1000 * cpu([python(c), "-c", "pass"], c),
    "import fabric.main, fabfile":
        lambda c, _: 1000 * wall([python(c), "-c", "import fabric.main, fabfile"], c),
    "import fabric.main, fabfile, CPU":
        lambda c, _: 1000 * cpu([python(c), "-c", "import fabric.main, fabfile"], c),
    "importtime: site": lambda c, _: import_ms(c, "site"),
    "importtime: fabfile": lambda c, _: import_ms(c, "fabfile"),
    "fab --list": lambda c, _: 1000 * wall([fab(c), "--list"], c),
    "fab --list, CPU": lambda c, _: 1000 * cpu([fab(c), "--list"], c),
    "fab deploy: first SSH connection": lambda c, w: 1000 * first_connection(c, w)[0],
    "fab deploy: first SSH connection, CPU": lambda c, w: 1000 * first_connection(c, w)[1],
}


def measure(checkouts: list[Path], runs: int, work: Path) -> dict[str, list[list[float]]]:
    """Milliseconds per measure and checkout, `runs` samples each."""
    samples: dict[str, list[list[float]]] = {name: [[] for _ in checkouts] for name in MEASURES}
    for _ in range(runs):
        for name, how in MEASURES.items():
            for i, checkout in enumerate(checkouts):
                samples[name][i].append(how(checkout, work))
    return samples


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT])
    args = parser.parse_args(argv)
    checkouts = [c.resolve() for c in args.checkouts]
    for checkout in checkouts:  # byte-compile as scripts/install does; warm the page cache
        wall([python(checkout), "-m", "compileall", "-q", "fpm_fleet", "tasks", "fabfile.py"],
             checkout)
        wall([fab(checkout), "--list"], checkout)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "app").mkdir()
        (work / "app" / "index.php").write_text("<?php echo 'ok';\n")
        samples = measure(checkouts, args.runs, work)
    print(f"ms, median (min) of {args.runs} runs; " +
          "; ".join(f"[{i + 1}] {c}" for i, c in enumerate(checkouts)))
    for name, per in samples.items():
        print(f"{name:40}" + "".join(f"{statistics.median(s):9.1f} ({min(s):5.1f})"
                                     for s in per))


if __name__ == "__main__":
    main()
