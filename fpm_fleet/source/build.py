"""The pool's `build` commands (`composer install --no-dev`, an asset build), run on the
control machine before anything is uploaded, always in a copy of the source: the user's
own directory is never written. Their output goes to the run's log.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from fpm_fleet.core.errors import SourceError
from fpm_fleet.core.events import Observer, step
from fpm_fleet.core.redact import redact

log = logging.getLogger("fpm_fleet.source")

# What a build's process group gets to finish after Ctrl-C before it is killed
STOP_GRACE = 5.0


def copy(source: Path, dest: Path) -> Path:
    """`source` copied to `dest`: files and modes, symlinks as symlinks (never followed)."""
    try:
        shutil.copytree(source, dest, symlinks=True)
    except (shutil.Error, OSError) as exc:  # a FIFO, an unreadable file, a full disk
        raise SourceError(f"copying {source} for the build failed: {_first(exc)}") from None
    return dest


def _first(exc: shutil.Error | OSError) -> str:
    """shutil.Error carries one (source, dest, why) per file: the first says enough."""
    errors = exc.args[0] if isinstance(exc, shutil.Error) and exc.args else None
    if isinstance(errors, list) and errors and len(errors[0]) == 3:
        return f"{errors[0][0]}: {errors[0][2]}"
    return str(exc)


def run(directory: Path, commands: tuple[str, ...], env: Mapping[str, str], obs: Observer,
        pool: str) -> None:
    """Each command in `directory` with `sh -c`, in order; the first failure stops it."""
    for command in commands:
        with step(obs, "local", "build", pool) as s:
            s.detail = redact(command)
            _run_one(directory, command, env, pool)


def _run_one(directory: Path, command: str, env: Mapping[str, str], pool: str) -> None:
    # a session of its own: an interrupt stops the whole build (npm, composer and their
    # children), not only the shell
    with subprocess.Popen(["sh", "-c", command], cwd=directory, env={**os.environ, **env},
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, start_new_session=True) as proc:
        assert proc.stdout is not None
        last = ""
        try:
            log.info("local: build %s: $ %s", pool, command)
            for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                log.info("local: build %s: %s", pool, line)
                last = line.strip() or last
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
    log.info("local: build %s: exit %s", pool, code)
    if code != 0:
        raise SourceError(f"build of pool {pool}: `{redact(command)}` failed (exit {code}): "
                          f"{redact(last) or 'no output'}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the build's process group, SIGKILL after STOP_GRACE."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=STOP_GRACE)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
