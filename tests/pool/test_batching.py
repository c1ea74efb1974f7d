"""How the map engine cuts batches of inputs by size (``Inputs.take``), without workers."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from rpc_parallel.pool import _engine
from rpc_parallel.pool._engine import LARGE_ITEM, MAX_BATCH_BYTES, Inputs


def batches(inputs: list[Any], size: int) -> list[tuple[int, list[Any]]]:
    """Every batch ``Inputs.take`` makes of ``inputs`` with up to ``size`` items each, as
    (start, items); each batch's payload is checked to be its items' msgpack array."""
    async def run() -> list[tuple[int, list[Any]]]:
        source = Inputs(inputs, "F")
        found = []
        while (batch := await source.take(size, 1 << 62)) is not None:
            assert msgspec.msgpack.decode(batch.payload) == batch.items
            assert len(batch.payload) <= MAX_BATCH_BYTES or len(batch.items) == 1
            found.append((batch.start, batch.items))
        return found

    return asyncio.run(run())


class CountingEncoder:
    def __init__(self) -> None:
        self.calls = 0
        self.encoder = msgspec.msgpack.Encoder()

    def encode(self, value: Any) -> bytes:
        self.calls += 1
        return self.encoder.encode(value)


def test_many_small_items_over_the_large_item_size_stay_one_batch_encoded_in_few_calls(
        monkeypatch: pytest.MonkeyPatch) -> None:
    words = [f"word-{i:06d}" for i in range(8192)]  # ~100 KiB together: over LARGE_ITEM
    assert len(msgspec.msgpack.encode(words)) > LARGE_ITEM
    counting = CountingEncoder()
    monkeypatch.setattr(_engine, "_ENCODER", counting)
    assert batches(words, 8192) == [(0, words)]
    assert counting.calls < 10, counting.calls  # not one call per word


def test_large_items_travel_alone_and_batches_stay_within_the_byte_limit() -> None:
    large, larger = b"x" * LARGE_ITEM, b"y" * (200 << 10)
    small = [b"s" * 1000] * 3000  # ~3 MB in all: three batches or so
    inputs: list[Any] = ["a", "b", large, "c", larger, *small, "z"]
    found = batches(inputs, 10_000)
    assert found[:4] == [(0, ["a", "b"]), (2, [large]), (3, ["c"]), (4, [larger])]
    rest = found[4:]
    assert [x for _, items in rest for x in items] == [*small, "z"]  # nothing lost, in order
    assert [start for start, _ in rest] == [5 + sum(len(i) for _, i in rest[:k])
                                             for k in range(len(rest))]
    assert 2 <= len(rest) <= 5 and all(len(items) > 900 for _, items in rest[:-1])
