"""The one error the benchmark raises for its own failures (a fab command, a missing pid)."""

from __future__ import annotations


class BenchError(Exception):
    """Something the benchmark needs did not work; the message says what and where."""
