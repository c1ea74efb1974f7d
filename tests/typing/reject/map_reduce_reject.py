"""Misuse of rp.map_reduce, rp.WorkerPool and rp.Managed. Every ``# expect-error`` line must be
rejected by both checkers."""

from __future__ import annotations

import rpc_parallel as rp


class Square(rp.MapFunction[int, int, float]):
    async def map(self, x: int) -> float:
        return float(x)


class Sum(rp.MapReduceFunction[None, int, int]):
    async def map(self, x: int) -> int:
        return x

    async def combine(self, a: int, b: int) -> int:
        return a + b


class BadCombine(rp.MapReduceFunction[None, int, int]):
    async def map(self, x: int) -> int:
        return x

    async def combine(self, a: str, b: str) -> str:  # expect-error
        return a + b


class BadMap(rp.MapFunction[None, int, int]):
    async def map(self, x: int) -> str:  # expect-error
        return ""


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x


class Other(rp.Worker[None]):
    @rp.rpc
    async def f(self) -> None:
        return None


async def main() -> None:
    config = rp.map_reduce.Config(local=2)
    rp.map_reduce.map(config, ["a"], Square, 1)  # expect-error
    rp.map_reduce.map(config, [1], Square, "one")  # expect-error
    await rp.map_reduce.map_reduce(config, [1], Square, 1)  # expect-error
    total = await rp.map_reduce.map_reduce(config, [1], Sum, None)
    text: str | None = total  # expect-error
    async for y in rp.map_reduce.map(config, [1], Square, 1):
        s: str = y  # expect-error
    words: list[str] = await rp.map_reduce.map(config, [1], Square, 1).collect()  # expect-error
    async for batch in rp.map_reduce.map(config, [1], Square, 1).batches():
        first: str = batch[0]  # expect-error
    async with config.open() as warm:
        rp.map_reduce.map(warm, ["a"], Square, 1)  # expect-error
        await rp.map_reduce.map_reduce(warm, [1], Square, 1)  # expect-error
    rp.map_reduce.map(rp.WorkerPool(Adder, 1, 2), [1], Square, 1)  # expect-error

    async with rp.WorkerPool(Adder, "x", 2) as bad:  # expect-error
        pass
    async with rp.WorkerPool(Adder, 1, 2) as pool:
        await pool.run(Adder.add, "1")  # expect-error
        await pool.run(Other.f)  # expect-error
        pool.submit(Adder.add, "1")  # expect-error
    managed = rp.Managed(Adder, 1)
    await managed.run(Adder.add, "1")  # expect-error
    rp.Managed(Adder, None)  # expect-error
