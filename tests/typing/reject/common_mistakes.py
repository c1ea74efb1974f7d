"""The three common mistakes with ``run`` (#11.12): what each checker says must name the
wrong argument or the result types, and only public names. Each ``# expect-error
pin a part of each checker's message, after ``mypy:`` / ``pyright:`` (checked by
tests/test_typing.py, which also refuses a private name or an overload list in them)."""

from __future__ import annotations

import rpc_parallel as rp


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x


class Other(rp.Worker[None]):
    @rp.rpc
    async def ping(self) -> str:
        return ""


async def wrong_argument(w: rp.WorkerHandle[Adder]) -> None:
    await w.run(Adder.add, "one")  # expect-error mypy: Argument 2 to "run" of "WorkerHandle" has incompatible type "str"; expected "int" pyright: cannot be assigned to parameter "x" of type "int"


async def wrong_result(w: rp.WorkerHandle[Adder]) -> None:
    total: str = await w.run(Adder.add, 1)  # expect-error mypy: "Rpc[Adder, [int], int]"; expected "Runnable[Adder, [int], str]" pyright: Type "int" is not assignable to declared type "str"


async def another_workers_function(w: rp.WorkerHandle[Adder]) -> None:
    await w.run(Other.ping)  # expect-error mypy: incompatible type "Rpc[Other, [], str]"; expected "Runnable[Adder pyright: "Rpc[Other, (), str]" is not assignable to "Runnable[Adder, (), str]"


async def on_a_connection(c: rp.Connection[Adder]) -> None:
    await c.run(Adder.add, "one")  # expect-error mypy: Argument 2 to "run" of "Connection" pyright: parameter "x"
