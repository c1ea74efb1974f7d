"""rp.map_reduce, rp.WorkerPool and rp.Managed as users write them: everything checks and the
result types are inferred from the function classes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import assert_type

import rpc_parallel as rp


class Square(rp.MapFunction[int, int, float]):
    async def init(self, param: int) -> None:
        self.scale = param

    async def map(self, x: int) -> float:
        return x * x / self.scale


class Words(rp.MapReduceFunction[None, str, dict[str, int]]):
    def map(self, x: str) -> dict[str, int]:  # plain def works too
        return {x: 1}

    def combine(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}


class Maybe(rp.MapFunction[None, int, str | None]):
    async def map(self, x: int) -> str | None:
        return str(x) if x == 3 else None


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        yield n


async def inputs() -> AsyncIterator[int]:
    yield 1


async def main() -> None:
    config = rp.map_reduce.Config(local=2, redirect_stderr=rp.DevNull())
    async for y in rp.map_reduce.map(config, range(10), Square, 3):
        assert_type(y, float)
    async for y in rp.map_reduce.map(config, inputs(), Square, 3):
        assert_type(y, float)
    assert_type(await rp.map_reduce.map(config, range(10), Square, 3).collect(), list[float])
    outputs = rp.map_reduce.map(config, range(10), Square, 3)
    assert_type(outputs, rp.map_reduce.MapOutputs[float])
    async for batch in outputs.batches():
        assert_type(batch, list[float])
    await outputs.aclose()
    async for pair in rp.map_reduce.map_unordered(config, [1, 2], Square, 3):
        assert_type(pair, tuple[int, float])
    hit = await rp.map_reduce.find_map(config, range(10), Maybe, None)
    assert_type(hit, str | None)
    counts = await rp.map_reduce.map_reduce(config, ["a", "b"], Words, None)
    assert_type(counts, dict[str, int] | None)
    counts = await rp.map_reduce.map_reduce_commutative(config, iter(["a"]), Words, None,
                                                        retries=2, progress=True)
    assert_type(counts, dict[str, int] | None)

    async with config.open() as warm:  # workers started once, reused by each map
        assert_type(warm, rp.map_reduce.MapPool)
        async for y in rp.map_reduce.map(warm, range(10), Square, 3):
            assert_type(y, float)
        assert_type(await rp.map_reduce.map_reduce(warm, ["a"], Words, None),
                    dict[str, int] | None)

    async with rp.WorkerPool(Adder, 1, 4, redirect_stderr=rp.DevNull()) as pool:
        assert_type(pool, rp.WorkerPool[Adder])
        assert_type(await pool.run(Adder.add, 1), int)
        assert_type(await pool.run(Adder.count, 1), rp.PipeReader[int])
        assert_type(await pool.submit(Adder.add, 2), int)
        assert_type(pool.workers, list[rp.WorkerHandle[Adder]])

    async with rp.Managed(Adder, 1, on_respawn=print) as managed:
        assert_type(managed, rp.Managed[Adder])
        assert_type(await managed.run(Adder.add, 1), int)
