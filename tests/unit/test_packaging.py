"""`pip install` of a checkout (not editable) gives a controller everything it needs: the
package, its data files (templates and shell scripts, the demo app) and the `fpm-fleet` command.

The wheel is built from a copy of the checkout (a build in place would leave build/ and
egg-info behind) without build isolation, so nothing is downloaded.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "fpm_fleet", "tasks", "templates", "etc")


def pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-input", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", minversion="70.1")  # builds wheels by itself
    work = tmp_path_factory.mktemp("build")
    checkout = work / "fpm-fleet"
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, checkout / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            checkout.mkdir(exist_ok=True)
            shutil.copy2(src, checkout / name)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), ".",
        cwd=checkout)
    (built,) = (work / "dist").glob("fpm_fleet-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed into a directory of its own (no dependencies: they are in this
    environment already)."""
    target = tmp_path_factory.mktemp("site")
    pip("install", "--no-deps", "--no-compile", "--target", str(target), str(wheel),
        cwd=target)
    return target


def test_the_wheel_holds_the_templates_the_demo_app_and_the_command(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for template in (ROOT / "templates").glob("*.j2"):
        assert f"fpm_fleet/templates/{template.name}" in names
    scripts = list((ROOT / "templates" / "sh").glob("*.sh"))
    assert scripts
    for script in scripts:
        assert f"fpm_fleet/templates/sh/{script.name}" in names
    for path in (ROOT / "etc" / "demo-app").rglob("*"):
        if path.is_file():
            assert f"fpm_fleet/demo_app/{path.relative_to(ROOT / 'etc' / 'demo-app')}" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "fpm-fleet = tasks.program:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def run_installed(installed: Path, code: str, cwd: Path) -> str:
    """Python code run against the installed copy only (not this checkout), from `cwd`."""
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_an_installed_copy_finds_its_data_inside_the_package(installed, tmp_path):
    out = run_installed(installed, "import fpm_fleet.core.resources as r, "
                        "fpm_fleet.sandbox.demo as d; print(r.TEMPLATES); print(d.DEMO_APP)",
                        tmp_path)
    templates, demo_app = (Path(line) for line in out.splitlines())
    assert templates == installed / "fpm_fleet" / "templates"
    assert (templates / "apache-site.conf.j2").is_file()
    assert demo_app == installed / "fpm_fleet" / "demo_app"
    assert (demo_app / "lib" / "part1.php").is_file()


def test_an_installed_copy_lists_its_tasks_from_another_directory(installed, tmp_path):
    out = run_installed(installed, "from tasks.program import main; main(['fpm-fleet', '--list'])",
                        tmp_path)
    assert "deploy" in out and "stress" in out


def test_an_installed_copy_renders_from_its_own_templates(installed, tmp_path):
    out = run_installed(
        installed, "import fpm_fleet.render as r; print(r.TEMPLATES)", tmp_path)
    assert Path(out.strip()) == installed / "fpm_fleet" / "templates"


def test_an_installed_copy_sends_and_installs_its_own_shell_scripts(installed, tmp_path):
    out = run_installed(installed, "import fpm_fleet.core.resources as r, fpm_fleet.render as h; "
                        "print(r.SHELL_SCRIPTS); "
                        "print(h.stop_script_files()[-1].text.splitlines()[0])", tmp_path)
    scripts, shebang = out.splitlines()
    assert Path(scripts) == installed / "fpm_fleet" / "templates" / "sh"
    assert shebang == "#!/bin/sh"
