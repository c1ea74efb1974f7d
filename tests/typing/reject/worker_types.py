"""A function runs only on its own worker type (or a subclass of it); spawn takes the
declared init argument. Every ``# expect-error`` line must be rejected."""

from __future__ import annotations

import rpc_parallel as rp


class Adder(rp.Worker[int]):
    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + self.offset


class Multiplier(rp.Worker[int]):
    @rp.rpc
    async def mul(self, x: int) -> int:
        return x


class SubAdder(Adder):
    @rp.rpc
    async def sub(self, x: int) -> int:
        return -x


class Config(rp.Worker[tuple[str, int]]):
    @rp.one_way
    async def poke(self) -> None:
        pass


class WrongInit(rp.Worker[int]):
    async def init_worker_state(self, offset: str) -> None:  # expect-error
        pass


async def use_adder(handle: rp.WorkerHandle[Adder]) -> None:
    pass


async def use_sub(handle: rp.WorkerHandle[SubAdder]) -> None:
    pass


def downcast(handle: rp.WorkerHandle[Adder]) -> rp.WorkerHandle[SubAdder]:
    return handle  # expect-error


async def main(adder: rp.WorkerHandle[Adder], sub: rp.WorkerHandle[SubAdder]) -> None:
    # a function of another worker type
    await adder.run(Multiplier.mul, 1)  # expect-error
    await adder.run(Config.poke)  # expect-error
    adder.submit(Multiplier.mul, 1)  # expect-error
    # a base handle cannot run a subclass's function; handles are not interchangeable
    await adder.run(SubAdder.sub, 1)  # expect-error
    await use_adder(await Multiplier.spawn(1))  # expect-error
    await use_sub(adder)  # expect-error

    # connections keep their worker type
    connection = await adder.connect()
    await connection.run(Multiplier.mul, 1)  # expect-error
    await connection.run(Adder.add, "1")  # expect-error
    c: rp.Connection[Multiplier] = connection  # expect-error
    print(c)

    # a wrong spawn init argument, or spawn options that do not exist
    await Adder.spawn("x")  # expect-error
    await Adder.spawn()  # expect-error
    await Adder.spawn(None)  # expect-error
    await SubAdder.spawn(1.5)  # expect-error
    await Config.spawn(("a", "b"))  # expect-error
    await Config.spawn(["a", 1])  # expect-error
    await Adder.spawn(1, 2)  # expect-error
    await Adder.spawn(1, hwo=rp.Local())  # expect-error
    await Adder.spawn(1, how="local")  # expect-error
    await Adder.spawn(1, shutdown_on="never")  # expect-error
    await Adder.spawn(1, redirect_stdout="/dev/null")  # expect-error
    await Adder.spawn(1, connection_timeout="10")  # expect-error
    await Adder.spawn(1, init_timeout="10")  # expect-error
    await Adder.spawn(1, env={"A": 1})  # expect-error
    await Adder.serve("x")  # expect-error
    await Adder.spawn_in_foreground("x")  # expect-error
    m: rp.WorkerHandle[Multiplier] = await Adder.spawn(1)  # expect-error
    print(m)

    # the right ones: no error
    await Adder.spawn(1, how=rp.Local(), shutdown_on="called_shutdown")
    await Config.spawn(("a", 1))
    await sub.run(Adder.add, 1)
    await use_adder(sub)
