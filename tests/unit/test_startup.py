"""Start-up: every `fab` run imports the task modules before it does anything, so what they
import is on the path of every deploy (ARCHITECTURE.md, Start-up). The task modules load
only what parses options and reads the inventory; a task loads the rest once its first
hosts are connecting, and what only some tasks, the live display, the recaps or a webhook
need is imported where it is used."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# each of them is imported by the task or the step that uses it, never at start-up
NOT_AT_START = (
    "jinja2", "fpm_fleet.provision", "fpm_fleet.render",  # setup, sudoers, check
    "fpm_fleet.status", "fpm_fleet.stress",  # status, stress, an interrupted rollout
    "fpm_fleet.live", "rich.live", "rich.table",  # the live display, the recap tables
    "fpm_fleet.webhook_http", "urllib.request", "http.client",  # a webhook that posts
    # loaded by a task once its first hosts are connecting (tasks/boundary.py)
    "rich", "fpm_fleet.output", "fpm_fleet.report", "fpm_fleet.notify", "fpm_fleet.source",
    "fpm_fleet.remote.group", "fpm_fleet.rollout.deploy", "fpm_fleet.rollout.hosts",
    "fpm_fleet.releases.store", "fpm_fleet.host.lock",
)


def loaded_by(code: str) -> set[str]:
    """The modules of NOT_AT_START a fresh interpreter has loaded after `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    return set(json.loads(proc.stdout)) & set(NOT_AT_START)


def test_fab_loads_the_tasks_without_what_only_some_tasks_need():
    assert loaded_by("import fabric.main, fabfile") == set()


def test_the_probe_sees_a_module_the_tasks_do_import():
    assert "fpm_fleet.status" in loaded_by("import fabfile\nimport fpm_fleet.status")


def test_a_run_whose_stderr_is_no_terminal_writes_its_lines_without_rich():
    """CI and pipes: the boundary's notes and the plain progress lines are written as they
    are, and rich (40 ms to load) is not loaded before a recap table needs it."""
    code = ("from fpm_fleet import output\n"
            "from fpm_fleet.core.events import Event\n"
            "output.note('stage: production', 'bold')\n"
            "output.PlainObserver().event(Event('done', 'h1', 'upload', 'www', 'verified', "
            "0.064))\n"
            "import sys\nassert 'rich' not in sys.modules, 'rich loaded'\n"
            "output.show(output.table('recap', ['host'], [['h1']]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "stage: production\n[h1] www upload ok 0.064s  verified\n"
    assert "recap" in proc.stdout and "h1" in proc.stdout
