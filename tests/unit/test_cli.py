"""The command line as an operator meets it: which inventory is read, and how bad input ends
(one message naming the problem, an exit code, no host touched: these hosts do not exist)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FAB = str(Path(sys.executable).with_name("fab"))

INVENTORY = """
[[hosts]]
name = "{name}"
address = "127.0.0.1"
port = 9  # nothing listens: refused at once, no packet leaves the machine
connect_timeout = 1

[pools.www]
replicas = 2
"""


def fab(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "FABRIC_INVENTORY"}
    return subprocess.run([FAB, *args], cwd=cwd, env={**full, **(env or {})},
                          capture_output=True, text=True, timeout=60, check=False)


def inventory(tmp_path: Path, name: str = "alpha", text: str | None = None) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text if text is not None else INVENTORY.format(name=name))
    return path


def test_the_environment_variable_chooses_the_inventory(tmp_path: Path) -> None:
    proc = fab("list", env={"FABRIC_INVENTORY": str(inventory(tmp_path, "from-env"))})
    assert proc.returncode == 0, proc.stderr
    assert "from-env" in proc.stdout


def test_a_fabric_yaml_next_to_the_fabfile_chooses_the_inventory(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "fabfile.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom tasks import collection\n"
        "ns = collection()\n")
    (project / "fabric.yaml").write_text(f"inventory: {inventory(tmp_path, 'from-yaml')}\n")
    proc = fab("list", cwd=project)
    assert proc.returncode == 0, proc.stderr
    assert "from-yaml" in proc.stdout


def test_a_malformed_inventory_exits_2_naming_file_and_key(tmp_path: Path) -> None:
    bad = inventory(tmp_path, text=INVENTORY.format(name="a").replace("replicas = 2",
                                                                      "replicas = 1"))
    proc = fab("restart", env={"FABRIC_INVENTORY": str(bad)})
    assert proc.returncode == 2
    assert f"{bad}: pools.www.replicas: must be >= 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_typo_in_a_key_exits_2_naming_the_closest_valid_key(tmp_path: Path) -> None:
    bad = inventory(tmp_path, text=INVENTORY.format(name="a") + "max_childen = 4\n")
    proc = fab("status", env={"FABRIC_INVENTORY": str(bad)})
    assert proc.returncode == 2
    assert "pools.www.max_childen: unknown key; did you mean 'max_children'?" in proc.stderr


def test_an_unknown_pool_or_host_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    env = {"FABRIC_INVENTORY": str(inventory(tmp_path))}
    proc = fab("restart", "--pool", "shop", env=env)
    assert proc.returncode == 2 and "unknown pool 'shop'; valid pools: www" in proc.stderr
    proc = fab("stop", "--host", "beta", env=env)
    assert proc.returncode == 2 and "unknown host 'beta'; valid hosts: alpha" in proc.stderr
    proc = fab("start", "--replica", "3", env=env)
    assert proc.returncode == 2 and "unknown replica 3" in proc.stderr


def test_an_unreachable_host_is_one_line_naming_it(tmp_path: Path) -> None:
    proc = fab("restart", env={"FABRIC_INVENTORY": str(inventory(tmp_path))})
    assert proc.returncode == 3
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "alpha (root@127.0.0.1:9): unreachable" in errors[0]
    assert "Traceback" not in proc.stderr
