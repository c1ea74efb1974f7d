"""A worker's own functions called as methods (#11.8): arguments and results are checked."""

from __future__ import annotations

from collections.abc import AsyncIterator

import rpc_parallel as rp


class Ledger(rp.Worker[None]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x

    @rp.rpc
    def square(self, x: int) -> int:
        return x * x

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        yield n

    @rp.rpc
    async def misuse(self) -> None:
        await self.add("one")  # expect-error
        a: str = await self.add(1)  # expect-error
        b: int = self.square(2)  # expect-error
        await self.square()  # expect-error
        c: list[str] = [n async for n in self.count(1)]  # expect-error
        self.add(1, 2)  # expect-error
