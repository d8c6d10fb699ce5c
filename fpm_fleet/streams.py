"""Copying a byte stream in bounded chunks (a release upload, the benchmark's plain tar)."""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

CHUNK = 256 * 1024  # big enough for few system calls, small enough to keep memory flat


def pump(source: IO[bytes], write: Callable[[bytes], object], chunk: int = CHUNK) -> int:
    """Feed `source` to `write` until its end, one chunk at a time; the bytes copied.

    `write` must take the whole chunk (paramiko's Channel.sendall, a buffered file's write).
    """
    sent = 0
    while data := source.read(chunk):
        write(data)
        sent += len(data)
    return sent
