"""Declarations the decorators refuse. Every ``# expect-error`` line must be rejected."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import rpc_parallel as rp


class Bad(rp.Worker[None]):
    @rp.one_way  # expect-error
    async def returns_value(self) -> int:
        return 1

    @rp.one_way  # expect-error
    def returns_value_sync(self) -> str:
        return ""

    @rp.pipe  # expect-error
    async def not_a_stream(self) -> int:
        return 1

    @rp.pipe  # expect-error
    def not_a_stream_sync(self) -> list[int]:
        return []

    @rp.state  # expect-error
    async def not_a_pair(self) -> int:
        return 1

    @rp.state  # expect-error
    async def updates_not_a_stream(self) -> tuple[int, list[int]]:
        return 1, []

    @rp.reverse_pipe  # expect-error
    def reverse_pipe_sync(self, items: AsyncIterator[int]) -> int:
        return 0

    @rp.rpc(name=1)  # expect-error
    async def bad_name(self) -> None:
        pass

    @rp.rpc(version="2")  # expect-error
    async def bad_version(self) -> None:
        pass

    @rp.pipe(nmae="x")  # expect-error
    async def bad_keyword(self) -> AsyncIterator[int]:
        yield 1

    @rp.state(version=1.5)  # expect-error
    def bad_state_version(self) -> tuple[int, Iterator[int]]:
        return 1, iter([])

    @rp.rpc("name")  # expect-error
    async def positional_name(self) -> None:
        pass

    @rp.rpc
    async def fine(self, x: int) -> int:
        return x


async def main(w: rp.WorkerHandle[Bad]) -> None:
    r: str = await w.run(Bad.fine, 1)  # expect-error
    print(r)
