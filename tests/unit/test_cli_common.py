"""cli_common.boundary: once the run's log exists, every way out ends with its path."""

from __future__ import annotations

from pathlib import Path

import pytest
from invoke.config import Config
from invoke.context import Context
from invoke.exceptions import Exit

from fpm_fleet.core.errors import ConnectError
from tasks.boundary import boundary

INVENTORY = '[[hosts]]\nname = "web1"\naddress = "198.18.0.11"\n[pools.www]\nreplicas = 2\n'


class Bug(Exception):
    pass


def leave(c: Context, raised: BaseException | None) -> tuple[object, Path]:
    """Run a task body that raises `raised`; how it ended (exit code or "bug"), and its log."""
    log_path = Path()
    try:
        with boundary(c, "fab test") as s:
            log_path = s.log_path
            if raised:
                raise raised
    except Exit as exc:
        return exc.code, log_path
    except Bug:
        return "bug", log_path
    return "ok", log_path


@pytest.mark.parametrize(("raised", "ended"), [
    (None, "ok"),
    (Exit(code=1), 1),                      # a task's own verdict: check, status, stress
    (ConnectError("web1: no route to host"), 3),
    (KeyboardInterrupt(), 130),
    (Bug("a bug"), "bug"),
])
def test_the_log_path_is_the_last_line_of_every_exit(tmp_path, capsys, raised, ended):
    (tmp_path / "hosts.toml").write_text(INVENTORY)
    c = Context(config=Config(overrides={"inventory": str(tmp_path / "hosts.toml")}))
    how, log_path = leave(c, raised)
    assert how == ended
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"log: {log_path}"
    assert log_path.is_file() and log_path.parent == tmp_path / "logs"
