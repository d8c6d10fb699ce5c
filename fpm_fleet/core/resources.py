"""Where fpm-fleet's data files are: inside the installed package (`pip install .` copies
templates/, etc/demo-app/ and etc/sudoers.d/ there), or beside the package in a checkout
(run from the source tree, or installed editable)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # the fpm_fleet package


def data_dir(installed: str, checkout: str, package: Path = PACKAGE) -> Path:
    """`installed` inside the package when it is there, else `checkout` beside it."""
    inside = package / installed
    return inside if inside.is_dir() else package.parent / checkout


TEMPLATES = data_dir("templates", "templates")
# Every multi-line shell script: sent ahead of a command (shell.script) or installed (render)
SHELL_SCRIPTS = TEMPLATES / "sh"
DEMO_APP = data_dir("demo_app", "etc/demo-app")
SUDOERS_TEMPLATE = data_dir("sudoers", "etc/sudoers.d") / "fpm-fleet"
