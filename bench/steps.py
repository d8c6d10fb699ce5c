"""The tool's own cost, from the plain lines of `fab restart --plain` (stderr), e.g.

    [h1] www-1 wait idle ok 1.455s  1.45s

Per replica: guard, drain, wait idle, stop, start, health, enable. Waiting for the longest
request in flight to finish (wait idle) and starting the new master (start) cannot be
avoided; everything else (SSH round trips, balancer-manager, health gate, process start of
`fab` itself) is overhead: (wall time - unavoidable) / replicas.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

STEPS = ("guard", "drain", "wait idle", "stop", "start", "health", "enable")
UNAVOIDABLE = ("wait idle", "start")
LINE = re.compile(r"^\[(?P<host>[^\]]+)\] (?P<target>\S+) (?P<step>[a-z][a-z ]*?) ok "
                  r"(?P<seconds>\d+(?:\.\d+)?)s\b")


@dataclass(frozen=True)
class StepTime:
    host: str
    replica: str
    step: str
    seconds: float


def parse(stderr: str) -> list[StepTime]:
    """Every finished replica step in the output; other lines are ignored."""
    found = []
    for line in stderr.splitlines():
        m = LINE.match(line.strip())
        if m and m["step"] in STEPS:
            found.append(StepTime(m["host"], m["target"], m["step"], float(m["seconds"])))
    return found


@dataclass
class Cost:
    label: str
    wall_s: float
    replicas: int
    steps_s: float
    unavoidable_s: float
    overhead_per_replica_ms: float
    step_median_ms: dict[str, float] = field(default_factory=dict)
    step_max_ms: dict[str, float] = field(default_factory=dict)


def cost(label: str, wall: float, steps: list[StepTime]) -> Cost:
    """Wall time against the unavoidable waits; per-step median and max."""
    replicas = sum(s.step == "start" for s in steps)  # one per replica restarted
    unavoidable = sum(s.seconds for s in steps if s.step in UNAVOIDABLE)
    c = Cost(label, round(wall, 2), replicas, round(sum(s.seconds for s in steps), 2),
             round(unavoidable, 2),
             round((wall - unavoidable) / replicas * 1000, 1) if replicas else 0.0)
    for name in STEPS:
        times = [s.seconds * 1000 for s in steps if s.step == name]
        if times:
            c.step_median_ms[name] = round(statistics.median(times), 1)
            c.step_max_ms[name] = round(max(times), 1)
    return c
