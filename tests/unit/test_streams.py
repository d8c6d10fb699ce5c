"""fpm_fleet.streams: the chunked copy behind uploads (and the benchmark's plain tar)."""

from __future__ import annotations

import io

from fpm_fleet import streams


def test_pump_copies_everything_in_bounded_chunks_and_counts_the_bytes():
    data = bytes(range(256)) * 2500  # 640000 bytes: two full chunks and a partial one
    chunks: list[bytes] = []
    assert streams.pump(io.BytesIO(data), chunks.append) == len(data)
    assert b"".join(chunks) == data
    assert [len(c) for c in chunks] == [streams.CHUNK, streams.CHUNK,
                                        len(data) - 2 * streams.CHUNK]


def test_pump_of_an_empty_stream_writes_nothing():
    chunks: list[bytes] = []
    assert streams.pump(io.BytesIO(b""), chunks.append) == 0
    assert chunks == []
