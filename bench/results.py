"""Everything one run measured, as one JSON document in bench/results/."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .load import Window
from .peer import Peer
from .scale import ScaleRow
from .steps import Cost
from .upload import UploadBench

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 3


@dataclass
class Results:
    profile: str
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    finished: str = ""
    seconds: float = 0.0
    lock_wait_s: float = 0.0
    complete: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    downtime: list[Window] = field(default_factory=list)
    fleet_restored: bool | None = None
    rollout_cost: list[Cost] = field(default_factory=list)
    upload: UploadBench | None = None
    scale: list[ScaleRow] = field(default_factory=list)
    peer: Peer | None = None  # Capistrano against fab deploy
    base_build_s: float | None = None  # None: the hosts' base tree was already built
    fleet_up_s: float | None = None  # `fab sandbox.up` of the downtime/upload fleet
    fleet_boot_s: float | None = None  # of which booting its hosts
    load_1m: list[float] = field(default_factory=list)  # this machine's, every 10 s
    errors: list[str] = field(default_factory=list)


def write(results: Results, directory: Path = RESULTS_DIR) -> list[Path]:
    """latest.json plus a timestamped copy; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"schema": SCHEMA, **asdict(results)}, indent=2) + "\n"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    paths = [directory / "latest.json", directory / f"{stamp}-{results.profile}.json"]
    for path in paths:
        path.write_text(text)
    return paths
