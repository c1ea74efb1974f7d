"""Results used as the wrong type: every ``# expect-error`` line must be rejected."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import rpc_parallel as rp


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x

    @rp.rpc
    def name(self) -> str:
        return "adder"

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        yield n

    @rp.pipe
    def lines(self) -> Iterator[str]:
        yield ""

    @rp.state
    async def watch(self, key: str) -> tuple[int, AsyncIterator[str]]:
        async def updates() -> AsyncIterator[str]:
            yield key

        return 0, updates()

    @rp.one_way
    async def fire(self, message: str) -> None:
        pass

    @rp.reverse_pipe
    async def total(self, numbers: AsyncIterator[int]) -> int:
        return 0


async def numbers() -> AsyncIterator[int]:
    yield 1


async def main(w: rp.WorkerHandle[Adder]) -> None:
    a: str = await w.run(Adder.add, 1)  # expect-error
    b: int = await w.run(Adder.name)  # expect-error
    c: list[int] = await w.run(Adder.count, 3)  # expect-error
    d: rp.PipeReader[str] = await w.run(Adder.count, 3)  # expect-error
    e: int = await w.run(Adder.count, 3)  # expect-error
    f: rp.PipeReader[int] = await w.run(Adder.lines)  # expect-error
    g: tuple[str, rp.PipeReader[str]] = await w.run(Adder.watch, "k")  # expect-error
    h: tuple[int, rp.PipeReader[int]] = await w.run(Adder.watch, "k")  # expect-error
    i: int = await w.run(Adder.watch, "k")  # expect-error
    j: int = await w.run(Adder.fire, "m")  # expect-error
    k: str = await w.run(Adder.total, numbers())  # expect-error
    m: str = await w.submit(Adder.add, 1)  # expect-error
    n: int = w.submit(Adder.add, 1)  # expect-error
    o: int = w.run(Adder.add, 1)  # expect-error

    reader = await w.run(Adder.count, 3)
    p: str = await anext(reader)  # expect-error
    async for item in reader:
        item.upper()  # expect-error
    initial, updates = await w.run(Adder.watch, "k")
    q: str = initial  # expect-error
    r: int = await anext(updates)  # expect-error
    async for update in updates:
        update + 1  # expect-error
    (await w.run(Adder.add, 1)).upper()  # expect-error
    len(await w.run(Adder.add, 1))  # expect-error
    await w.run(Adder.add, 1) + "x"  # expect-error

    # the descriptors' own types
    s: rp.Rpc[Adder, [int], str] = Adder.add  # expect-error
    t: rp.Rpc[Adder, [str], int] = Adder.add  # expect-error
    u: rp.Pipe[Adder, [int], int] = Adder.add  # expect-error
    v: rp.OneWay[Adder, [str]] = Adder.add  # expect-error
    print(a, b, c, d, e, f, g, h, i, j, k, m, n, o, p, q, r, s, t, u, v)
