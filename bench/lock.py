"""The machine's sandbox lock: one local fleet at a time (tests, benchmarks, developers)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fpm_fleet.sandbox.hosts import LOCK_HELD, LOCK_PATH


@contextmanager
def exclusive_sandbox(say: Callable[[str], None], path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold an exclusive flock on `path` for the block; wait (and say so) if it is taken.

    Python opens the file close-on-exec, so daemons started meanwhile never inherit it.
    """
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {path}: another sandbox user (tests?) holds it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        os.environ[LOCK_HELD] = "1"  # the `fab sandbox.*` commands we run go through
        try:
            yield
        finally:
            os.environ.pop(LOCK_HELD, None)
            fcntl.flock(fh, fcntl.LOCK_UN)
