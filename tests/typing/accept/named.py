# pyright: strict
"""The ``name=`` / ``version=`` decorator forms keep every type."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import assert_type

import rpc_parallel as rp


class Service(rp.Worker[str]):
    @rp.rpc(name="service.add", version=2)
    async def add(self, x: int, y: int = 0) -> int:
        return x + y

    @rp.rpc(version=3)
    def add_sync(self, x: int) -> int:
        return x

    @rp.rpc()
    async def plain(self) -> str:
        return "plain"

    @rp.pipe(name="service.ticks")
    async def ticks(self, n: int) -> AsyncIterator[float]:
        for i in range(n):
            yield float(i)

    @rp.pipe(version=2)
    def lines(self, text: str) -> Iterator[str]:
        yield from text.splitlines()

    @rp.state(name="service.watch", version=4)
    async def watch(self) -> tuple[str, AsyncIterator[int]]:
        async def updates() -> AsyncIterator[int]:
            yield 1

        return "initial", updates()

    @rp.state(version=2)
    def watch_sync(self) -> tuple[str, Iterator[int]]:
        return "initial", iter([1])

    @rp.one_way(name="service.poke")
    async def poke(self, n: int) -> None:
        pass

    @rp.one_way(version=2)
    def poke_sync(self, n: int) -> None:
        pass

    @rp.reverse_pipe(name="service.sum", version=5)
    async def sum(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])


async def numbers() -> AsyncIterator[int]:
    yield 1


async def main() -> None:
    async with await Service.spawn("config") as w:
        assert_type(await w.run(Service.add, 1), int)
        assert_type(await w.run(Service.add, 1, y=2), int)
        assert_type(await w.run(Service.add_sync, 1), int)
        assert_type(await w.run(Service.plain), str)
        assert_type(await w.run(Service.ticks, 3), rp.PipeReader[float])
        assert_type(await w.run(Service.lines, "a\nb"), rp.PipeReader[str])
        assert_type(await w.run(Service.watch), tuple[str, rp.PipeReader[int]])
        assert_type(await w.run(Service.watch_sync), tuple[str, rp.PipeReader[int]])
        assert_type(await w.run(Service.poke, 1), None)
        assert_type(await w.run(Service.poke_sync, 1), None)
        assert_type(await w.run(Service.sum, numbers()), int)
        assert Service.add.name == "service.add"
        assert Service.add.version == 2
