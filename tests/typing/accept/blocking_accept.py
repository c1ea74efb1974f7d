# pyright: strict
"""``rp.blocking`` (#11.11): typed like the async API with the awaitable removed; streams are
``rp.blocking.PipeIterator``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import assert_type

import rpc_parallel as rp


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        yield n

    @rp.state
    async def watch(self, key: str) -> tuple[dict[str, int], AsyncIterator[str]]:
        async def updates() -> AsyncIterator[str]:
            yield key

        return {}, updates()

    @rp.one_way
    async def fire(self, message: str) -> None:
        pass

    @rp.reverse_pipe
    async def total(self, numbers: AsyncIterator[int]) -> int:
        return 0


async def numbers() -> AsyncIterator[int]:
    yield 1


def main() -> None:
    with rp.blocking.spawn(Adder, 1) as w:
        assert_type(w, rp.blocking.WorkerHandle[Adder])
        assert_type(w.run(Adder.add, 2), int)
        assert_type(w.run(Adder.count, 2), rp.blocking.PipeIterator[int])
        for item in w.run(Adder.count, 2):
            assert_type(item, int)
        assert_type(w.run(Adder.watch, "k"), tuple[dict[str, int], rp.blocking.PipeIterator[str]])
        assert_type(w.run(Adder.fire, "x"), None)
        assert_type(w.run(Adder.total, numbers()), int)
        assert_type(w.handle, rp.WorkerHandle[Adder])
        assert_type(w.submit(Adder.add, 1).result(), int)
        with w.connect("state") as c:
            assert_type(c, rp.blocking.Connection[Adder])
            assert_type(c.run(Adder.add, 2), int)
            assert_type(c.run(Adder.count, 2), rp.blocking.PipeIterator[int])
        for record in w.subscribe_logs():
            assert_type(record, rp.LogRecord)
