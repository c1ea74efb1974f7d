# pyright: strict
"""Every function kind with ``async def`` implementations: what ``run`` gives."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator
from typing import assert_type

import rpc_parallel as rp


class Adder(rp.Worker[int]):
    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + self.offset

    @rp.rpc
    async def describe(self, x: int, *, label: str = "", scale: float = 1.0) -> str:
        return f"{label}{x * scale}"

    @rp.rpc
    async def nothing(self) -> None:
        return None

    @rp.rpc
    async def pair(self, a: str, b: list[int] | None = None) -> tuple[str, list[int]]:
        return a, b or []

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i + self.offset

    @rp.pipe
    async def letters(self, word: str) -> AsyncGenerator[str, None]:
        for letter in word:
            yield letter

    @rp.pipe
    async def chunks(self) -> AsyncIterable[bytes]:
        yield b"chunk"

    @rp.state
    async def watch(self, key: str) -> tuple[dict[str, int], AsyncIterator[str]]:
        async def updates() -> AsyncIterator[str]:
            yield key

        return {key: self.offset}, updates()

    @rp.one_way
    async def fire(self, message: str) -> None:
        print(message)

    @rp.reverse_pipe
    async def total(self, scale: int, numbers: AsyncIterator[int]) -> int:
        return scale * sum([x async for x in numbers])

    @rp.reverse_pipe
    async def join(self, parts: AsyncIterable[str], *, separator: str = "") -> str:
        return separator.join([part async for part in parts])


async def numbers() -> AsyncIterator[int]:
    yield 1
    yield 2


async def words() -> AsyncGenerator[str, None]:
    yield "a"


async def main() -> None:
    handle = await Adder.spawn(42)
    assert_type(handle, rp.WorkerHandle[Adder])
    async with handle as w:
        assert_type(w, rp.WorkerHandle[Adder])

        # rpc
        assert_type(await w.run(Adder.add, 1), int)
        assert_type(await w.run(Adder.add, x=1), int)
        assert_type(await w.run(Adder.describe, 1), str)
        assert_type(await w.run(Adder.describe, 1, label="n=", scale=2.0), str)
        assert_type(await w.run(Adder.nothing), None)
        assert_type(await w.run(Adder.pair, "a"), tuple[str, list[int]])
        assert_type(await w.run(Adder.pair, "a", [1, 2]), tuple[str, list[int]])
        assert_type(await w.run(Adder.pair, "a", None), tuple[str, list[int]])
        total: int = await w.run(Adder.add, 0) + 1
        assert total == 43

        # pipe
        reader = await w.run(Adder.count, 3)
        assert_type(reader, rp.PipeReader[int])
        async for item in reader:
            assert_type(item, int)
        items = [x async for x in await w.run(Adder.count, n=3)]
        assert_type(items, list[int])
        await reader.aclose()
        assert_type(await w.run(Adder.letters, "abc"), rp.PipeReader[str])
        assert_type(await w.run(Adder.chunks), rp.PipeReader[bytes])

        # state
        result = await w.run(Adder.watch, "k")
        assert_type(result, tuple[dict[str, int], rp.PipeReader[str]])
        initial, updates = result
        assert_type(initial, dict[str, int])
        assert_type(updates, rp.PipeReader[str])
        async for update in updates:
            assert_type(update, str)

        # one_way
        assert_type(await w.run(Adder.fire, "hello"), None)
        await w.run(Adder.fire, message="hello")

        # reverse_pipe
        assert_type(await w.run(Adder.total, 2, numbers()), int)
        assert_type(await w.run(Adder.total, scale=2, numbers=numbers()), int)
        assert_type(await w.run(Adder.join, await w.run(Adder.letters, "ab")), str)
        assert_type(await w.run(Adder.join, words(), separator=" "), str)

        # submit: rpc functions only, a future of the result
        future = w.submit(Adder.add, 1)
        assert_type(await future, int)

        # the descriptors themselves are typed values
        f: rp.Rpc[Adder, [int], int] = Adder.add
        p: rp.Pipe[Adder, [int], int] = Adder.count
        s: rp.StateFunction[Adder, [str], dict[str, int], str] = Adder.watch
        o: rp.OneWay[Adder, [str]] = Adder.fire
        r: rp.ReversePipe[Adder, [int, AsyncIterator[int]], int] = Adder.total
        g: rp.Function[Adder] = Adder.add
        assert_type(await w.run(f, 1), int)
        assert_type(await w.run(p, 1), rp.PipeReader[int])
        assert_type(await w.run(s, "k"), tuple[dict[str, int], rp.PipeReader[str]])
        assert_type(await w.run(o, "m"), None)
        assert_type(await w.run(r, 1, numbers()), int)
        assert g.name == "Adder.add"


if __name__ == "__main__":
    rp.start_app(main)
