"""Misuse of ``run``'s arguments: every ``# expect-error`` line must be rejected."""

from __future__ import annotations

from collections.abc import AsyncIterator

import rpc_parallel as rp


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x

    @rp.rpc
    async def scaled(self, x: int, *, scale: float = 1.0) -> float:
        return x * scale

    @rp.rpc
    def square(self, x: int) -> int:
        return x * x

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        yield n

    @rp.state
    async def watch(self, key: str) -> tuple[int, AsyncIterator[str]]:
        async def updates() -> AsyncIterator[str]:
            yield key

        return 0, updates()

    @rp.one_way
    async def fire(self, message: str) -> None:
        pass

    @rp.reverse_pipe
    async def total(self, scale: int, numbers: AsyncIterator[int]) -> int:
        return scale


async def numbers() -> AsyncIterator[int]:
    yield 1


async def strings() -> AsyncIterator[str]:
    yield "1"


async def main(w: rp.WorkerHandle[Adder]) -> None:
    # rpc: wrong type, arity, keywords
    await w.run(Adder.add, "0")  # expect-error
    await w.run(Adder.add, 1.5)  # expect-error
    await w.run(Adder.add, None)  # expect-error
    await w.run(Adder.add)  # expect-error
    await w.run(Adder.add, 1, 2)  # expect-error
    await w.run(Adder.add, y=1)  # expect-error
    await w.run(Adder.add, x="1")  # expect-error
    await w.run(Adder.add, 1, x=1)  # expect-error
    await w.run(Adder.scaled, 1, 2.0)  # expect-error
    await w.run(Adder.scaled, 1, scale="2")  # expect-error
    await w.run(Adder.scaled, 1, sclae=2.0)  # expect-error
    await w.run(Adder.square, "3")  # expect-error
    await w.run(Adder.square, 3, 4)  # expect-error
    w.submit(Adder.add, "1")  # expect-error
    w.submit(Adder.add)  # expect-error

    # pipe
    await w.run(Adder.count, "3")  # expect-error
    await w.run(Adder.count)  # expect-error
    await w.run(Adder.count, 3, limit=4)  # expect-error

    # state
    await w.run(Adder.watch, 1)  # expect-error
    await w.run(Adder.watch, "k", "l")  # expect-error

    # one_way
    await w.run(Adder.fire, 1)  # expect-error
    await w.run(Adder.fire)  # expect-error

    # reverse_pipe: the stream must be what the parameter declares
    await w.run(Adder.total, 1, strings())  # expect-error
    await w.run(Adder.total, "1", numbers())  # expect-error
    await w.run(Adder.total, 1)  # expect-error
    await w.run(Adder.total, numbers())  # expect-error
    await w.run(Adder.total, 1, numbers(), numbers())  # expect-error

    # submit takes rpc functions only
    w.submit(Adder.count, 3)  # expect-error
    w.submit(Adder.fire, "m")  # expect-error

    # things that are not worker functions
    await w.run(len, "abc")  # expect-error
    await w.run(lambda: 1)  # expect-error
    await w.run("Adder.add", 1)  # expect-error

    # correct calls: no error
    await w.run(Adder.add, 1)
    await w.run(Adder.scaled, 1, scale=2.0)
    await w.run(Adder.total, 1, numbers())
