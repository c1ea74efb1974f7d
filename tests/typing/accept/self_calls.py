# pyright: strict
"""Inside a worker, its own functions are methods (#11.8): ``await self.f(...)`` is typed as
the bound implementation awaited (an ``async def``'s, or a plain ``def``'s run in a thread);
on the class, ``Adder.add`` stays the typed descriptor."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import assert_type

import rpc_parallel as rp


class Ledger(rp.Worker[None]):
    max_thread_concurrency = 2

    @rp.rpc
    async def add(self, x: int, *, y: int = 0) -> int:
        return x + y

    @rp.rpc
    def square(self, x: int) -> int:
        return x * x

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        yield n

    @rp.pipe
    def lines(self) -> Iterator[str]:
        yield ""

    @rp.state
    def watch(self) -> tuple[int, Iterator[str]]:
        return 0, iter([""])

    @rp.one_way
    async def fire(self, message: str) -> None:
        pass

    @rp.rpc
    async def uses_itself(self) -> int:
        assert_type(await self.add(1, y=2), int)
        assert_type(await self.square(3), int)
        assert_type([n async for n in self.count(3)], list[int])
        assert_type([line async for line in self.lines()], list[str])
        initial, updates = await self.watch()
        assert_type(initial, int)
        assert_type(updates, AsyncIterator[str])
        assert_type(await self.fire("x"), None)
        return 0


async def on_the_class(w: rp.WorkerHandle[Ledger]) -> None:
    square: rp.Rpc[Ledger, [int], int] = Ledger.square
    count: rp.Pipe[Ledger, [int], int] = Ledger.count
    fire: rp.OneWay[Ledger, [str]] = Ledger.fire
    assert_type(await w.run(Ledger.add, 1, y=2), int)
    assert_type(await w.run(square, 2), int)
    assert_type(await w.run(count, 2), rp.PipeReader[int])
    assert_type(await w.run(fire, "x"), None)
