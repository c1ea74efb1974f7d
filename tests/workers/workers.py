"""Worker classes in an importable module (no ``start_app`` needed to spawn them)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator

import msgspec

import rpc_parallel as rp
from rpc_parallel._state import process

log = logging.getLogger("tests.workers")


class Settings(msgspec.Struct, frozen=True):
    """What a worker reports about its process state."""

    role: str
    max_message_size: int
    handshake_timeout: float
    heartbeat_interval: float
    heartbeat_timeout: float


class Echo(rp.Worker[int]):
    """A worker with one function of every kind and a few that misbehave on request."""

    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset
        self.remembered: list[str] = []
        self.stream_closed = asyncio.Event()
        self.children: list[rp.WorkerHandle[Echo]] = []

    async def init_connection_state(self, arg: str) -> str:
        return f"state:{arg}"

    # ----- every kind

    @rp.rpc
    async def add(self, x: int, y: int = 10, *, scale: int = 1) -> int:
        return (x + y) * scale + self.offset

    @rp.rpc
    def add_in_thread(self, x: int) -> tuple[int, bool]:
        """A plain def: runs in a thread, not on the event loop's thread."""
        return x + self.offset, threading.current_thread() is threading.main_thread()

    @rp.rpc
    def spin(self, seconds: float) -> int:
        """CPU-bound for ``seconds`` (in a thread; the loop keeps answering heartbeats)."""
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            n += 1
        return n

    @rp.pipe
    async def count(self, n: int, step: int = 1) -> AsyncIterator[int]:
        for i in range(0, n * step, step):
            yield i + self.offset

    @rp.pipe
    async def endless(self) -> AsyncIterator[int]:
        i = 0
        try:
            while True:
                yield i
                i += 1
                await asyncio.sleep(0.001)
        finally:
            self.stream_closed.set()

    @rp.rpc
    async def stream_was_closed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.stream_closed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    @rp.state
    async def counter(self, start: int) -> tuple[int, AsyncIterator[str]]:
        async def updates() -> AsyncIterator[str]:
            for i in range(start + 1, start + 4):
                yield f"update {i}"

        return start + self.offset, updates()

    @rp.one_way
    async def remember(self, value: str) -> None:
        self.remembered.append(value)

    @rp.rpc
    async def recall(self) -> list[str]:
        return self.remembered

    @rp.reverse_pipe
    async def total(self, scale: int, values: AsyncIterator[int]) -> int:
        result = 0
        async for value in values:
            result += value * scale
        return result

    @rp.reverse_pipe
    async def swallow(self, values: AsyncIterator[int]) -> int:
        """Reads its stream forever (a call that stays in flight)."""
        n = 0
        async for _ in values:
            n += 1
        return n

    @rp.rpc(name="echo/renamed", version=7)
    async def renamed(self) -> str:
        return "renamed"

    @rp.rpc
    async def whoami(self) -> str | None:
        state: str | None = self.connection_state
        return state

    # ----- process facts

    @rp.rpc
    async def pid(self) -> int:
        return os.getpid()

    @rp.rpc
    async def environment(self, key: str) -> str | None:
        return os.environ.get(key)

    @rp.rpc
    async def cwd(self) -> str:
        return os.getcwd()

    @rp.rpc
    async def umask(self) -> int:
        mask = os.umask(0)
        os.umask(mask)
        return mask

    @rp.rpc
    async def niceness(self) -> int:
        return os.nice(0)

    @rp.rpc
    async def say(self, text: str) -> None:
        print(f"out: {text}", flush=True)
        print(f"err: {text}", file=sys.stderr, flush=True)

    @rp.rpc
    async def settings(self) -> Settings:
        settings = process().rpc_settings()
        return Settings(rp.State.get().value, settings.max_message_size,
                        settings.handshake_timeout, settings.heartbeat_interval,
                        settings.heartbeat_timeout)

    @rp.rpc
    async def warn(self, message: str) -> None:
        log.warning("%s", message)

    @rp.rpc
    async def sleep(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "slept"

    # ----- workers and handles

    @rp.rpc
    async def add_through(self, other: rp.WorkerHandle[Echo], x: int) -> tuple[int, str | None]:
        """Connect to another worker from this one and run a function there."""
        async with await other.connect("peer") as connection:
            return await connection.run(Echo.add, x), await connection.run(Echo.whoami)

    @rp.rpc
    async def spawn_and_use(self, offset: int) -> tuple[int, int]:
        """Spawn a worker from this worker, use it, close it: (its pid, add(1) there)."""
        async with await Echo.spawn(offset, redirect_stdout=rp.DevNull()) as child:
            return child.pid, await child.run(Echo.add, 1, 0)

    @rp.rpc
    async def child_settings(self) -> Settings:
        """The settings a worker spawned by this worker runs with."""
        async with await Echo.spawn(0) as child:
            return await child.run(Echo.settings)

    @rp.rpc
    async def spawn_and_keep(self, offset: int) -> int:
        """Spawn a worker that this worker keeps; its pid."""
        child = await Echo.spawn(offset)
        self.children.append(child)
        return child.pid

    # ----- failures

    @rp.rpc
    async def fail(self, message: str) -> int:
        raise ValueError(message)

    @rp.one_way
    async def fail_one_way(self, message: str) -> None:
        raise RuntimeError(message)

    @rp.rpc
    async def fail_in_background(self, message: str) -> None:
        async def boom() -> None:
            await asyncio.sleep(0.01)
            raise KeyError(message)

        self.start_background(boom(), name="boom")

    @rp.rpc
    async def exit_now(self, code: int) -> None:
        print(f"exiting with {code}", file=sys.stderr, flush=True)
        os._exit(code)

    @rp.rpc
    async def wrong_result(self) -> int:
        return "not an int"  # type: ignore[return-value]


class Plain(rp.Worker[None]):
    """No ``init_worker_state``: its start is one connection, registered at once."""

    @rp.rpc
    async def pid(self) -> int:
        return os.getpid()


class InitFails(rp.Worker[str]):
    async def init_worker_state(self, message: str) -> None:
        print("init is about to fail", file=sys.stderr, flush=True)
        raise ValueError(message)

    @rp.rpc
    async def ping(self) -> str:
        return "pong"


class Failures:
    """An ``on_failure`` callback that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[rp.WorkerFailure] = []

    def __call__(self, failure: rp.WorkerFailure) -> None:
        self.items.append(failure)

    async def first(self, timeout: float = 10.0) -> rp.WorkerFailure:
        from .support import wait_until

        await wait_until(lambda: bool(self.items), timeout, "on_failure to be called")
        return self.items[0]
