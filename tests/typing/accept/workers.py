# pyright: strict
"""Spawning, connections, subclass workers, handles as values."""

from __future__ import annotations

import asyncio
from typing import Any, assert_type

import rpc_parallel as rp


class Base(rp.Worker[int]):
    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset

    async def init_connection_state(self, arg: object) -> str:
        return str(arg)

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + self.offset


class Derived(Base):
    @rp.rpc
    async def double(self, x: int) -> int:
        return 2 * x


class Other(rp.Worker[tuple[str, int]]):
    async def init_worker_state(self, arg: tuple[str, int]) -> None:
        self.arg = arg

    @rp.rpc
    async def use(self, peer: rp.WorkerHandle[Base]) -> int:
        async with await peer.connect() as connection:
            return await connection.run(Base.add, 1)


class NoInit(rp.Worker[None]):
    @rp.rpc
    async def ping(self) -> str:
        return "pong"


class PlainInit(rp.Worker[float]):
    def init_worker_state(self, seconds: float) -> None:  # a plain def (it may block)
        self.seconds = seconds

    @rp.rpc
    async def get(self) -> float:
        return self.seconds


async def add_one(handle: rp.WorkerHandle[Base]) -> int:
    return await handle.run(Base.add, 1)


async def main() -> None:
    base = await Base.spawn(42)
    assert_type(base, rp.WorkerHandle[Base])
    derived = await Derived.spawn(
        1,
        how=rp.Wrap(["nice", "-n", "5"]),
        name="derived",
        env={"A": "1"},
        cwd="/tmp",
        umask=0o022,
        shutdown_on="heartbeat_timeout",
        redirect_stdout=rp.DevNull(),
        redirect_stderr=rp.FileAppend("/tmp/err.log"),
        on_failure=print,
        connection_timeout=5.0,
        init_timeout=None,
    )
    assert_type(derived, rp.WorkerHandle[Derived])
    other = await Other.spawn(("a", 1), how=rp.Local(), redirect_stdout=rp.FileTruncate("/tmp/o"))
    assert_type(other, rp.WorkerHandle[Other])
    none = await NoInit.spawn(None, redirect_stderr=rp.Forward())
    plain = await PlainInit.spawn(0.5, init_timeout=60.0)
    assert_type(await plain.run(PlainInit.get), float)
    assert_type(await none.run(NoInit.ping), str)

    # a subclass worker runs its base class's functions and its own
    assert_type(await derived.run(Derived.add, 1), int)
    assert_type(await derived.run(Base.add, 1), int)
    assert_type(await derived.run(Derived.double, 1), int)

    # connections
    connection = await base.connect("state")
    assert_type(connection, rp.Connection[Base])
    assert_type(await connection.run(Base.add, 1), int)
    derived_connection = await derived.connect()
    assert_type(derived_connection, rp.Connection[Derived])
    assert_type(await derived_connection.run(Base.add, 1), int)
    assert_type(await derived_connection.run(Derived.double, 1), int)
    assert_type(derived_connection.submit(Derived.double, 1), asyncio.Future[int])
    await connection.close()

    # handles are values: sent to other workers, used as their base type
    assert_type(await other.run(Other.use, base), int)
    assert_type(await other.run(Other.use, derived), int)
    assert_type(await add_one(derived), int)

    # in-process servers and foreground spawns
    served = await Base.serve(0, name="in-process")
    assert_type(served, rp.WorkerHandle[Base])
    foreground, process = await Derived.spawn_in_foreground(3)
    assert_type(foreground, rp.WorkerHandle[Derived])
    assert_type(process, rp.WorkerProcess)

    # handle attributes and lifecycle
    assert isinstance(base.id, str) and isinstance(base.name, str)
    assert isinstance(base.pid, int) and isinstance(base.host, str)
    assert_type(await base.subscribe_logs(), rp.PipeReader[rp.LogRecord])
    await served.close_server()
    await base.shutdown()
    handles: list[rp.WorkerHandle[rp.Worker[Any]]] = [derived, other, none, served, foreground]
    for handle in handles:
        await handle.close()


if __name__ == "__main__":
    rp.start_app(main)
