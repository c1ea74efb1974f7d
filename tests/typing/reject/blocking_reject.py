"""``rp.blocking`` misuse: every ``# expect-error`` line must be rejected."""

from __future__ import annotations

from collections.abc import AsyncIterator

import rpc_parallel as rp


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        yield n


class Other(rp.Worker[None]):
    @rp.rpc
    async def ping(self) -> str:
        return ""


def main() -> None:
    rp.blocking.spawn(Adder, "one")  # expect-error
    with rp.blocking.spawn(Adder, 1) as w:
        w.run(Adder.add, "one")  # expect-error
        a: str = w.run(Adder.add, 1)  # expect-error
        w.run(Other.ping)  # expect-error
        b: list[str] = list(w.run(Adder.count, 1))  # expect-error
        c: int = w.run(Adder.count, 1)  # expect-error
        w.submit(Adder.count, 1)  # expect-error
        d: str = w.submit(Adder.add, 1).result()  # expect-error
        w.connect().run(Other.ping)  # expect-error
