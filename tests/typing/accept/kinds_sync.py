# pyright: strict
"""Plain ``def`` implementations (they run in a thread): the same result types as ``async def``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import assert_type

import rpc_parallel as rp


class Cruncher(rp.Worker[None]):
    @rp.rpc
    def square(self, x: int) -> int:
        return x * x

    @rp.rpc
    def maybe(self, x: int) -> float | None:
        return x / 2 if x else None

    @rp.pipe
    def digits(self, n: int) -> Iterator[str]:
        yield from str(n)

    @rp.state
    def snapshot(self, n: int) -> tuple[list[int], Iterator[int]]:
        return list(range(n)), iter(range(n))

    @rp.state
    def snapshot_async_updates(self, n: int) -> tuple[int, AsyncIterator[bytes]]:
        async def updates() -> AsyncIterator[bytes]:
            yield b"x"

        return n, updates()

    @rp.one_way
    def log(self, message: str) -> None:
        print(message)


async def main() -> None:
    async with await Cruncher.spawn(None) as w:
        assert_type(w, rp.WorkerHandle[Cruncher])
        assert_type(await w.run(Cruncher.square, 3), int)
        assert_type(await w.run(Cruncher.maybe, 3), float | None)
        assert_type(await w.run(Cruncher.digits, 123), rp.PipeReader[str])
        assert_type(await w.run(Cruncher.snapshot, 3), tuple[list[int], rp.PipeReader[int]])
        assert_type(
            await w.run(Cruncher.snapshot_async_updates, 3), tuple[int, rp.PipeReader[bytes]]
        )
        assert_type(await w.run(Cruncher.log, "hi"), None)
        assert_type(await w.submit(Cruncher.square, 4), int)
        square: rp.Rpc[Cruncher, [int], int] = Cruncher.square
        digits: rp.Pipe[Cruncher, [int], str] = Cruncher.digits
        log: rp.OneWay[Cruncher, [str]] = Cruncher.log
        assert_type(await w.run(square, 2), int)
        assert_type(await w.run(digits, 2), rp.PipeReader[str])
        assert_type(await w.run(log, "x"), None)
