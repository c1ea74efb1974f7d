"""#11.8 and #11.9, more cases: a worker's own functions called as methods, whatever their
kind and whether ``async def`` or plain ``def``; ``max_thread_concurrency``; a worker busy in
a plain ``def`` closes promptly."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest

import rpc_parallel as rp

from ..hardening.support import descendants
from ..workers.support import bounded


class Counter:
    """How many calls run at once, at most."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0

    def busy(self, seconds: float) -> int:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(seconds)
        with self.lock:
            self.active -= 1
        return self.most


class SelfCalls(rp.Worker[None]):
    async def init_worker_state(self, init_arg: None) -> None:
        self.counter = Counter()
        self.seen: list[str] = []

    @rp.rpc
    def square(self, x: int) -> int:
        return x * x

    @rp.rpc
    async def add(self, x: int, *, y: int = 0) -> int:
        return x + y

    @rp.pipe
    def digits(self, n: int) -> Iterator[int]:
        yield from (int(d) for d in str(n))

    @rp.pipe
    async def upto(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @rp.state
    def watch(self) -> tuple[int, Iterator[str]]:
        return 1, iter(["a", "b"])

    @rp.one_way
    def note(self, text: str) -> None:
        self.seen.append(text)

    @rp.rpc
    async def all_via_self(self) -> list[int]:
        """Each kind of this worker's functions, called as methods."""
        squared = await self.square(3)
        added = await self.add(1, y=2)
        digits = [d async for d in self.digits(451)]
        upto = [i async for i in self.upto(3)]
        initial, updates = await self.watch()
        await self.note("x")
        letters = [u async for u in updates]
        return [squared, added, *digits, *upto, initial, len(letters), len(self.seen)]

    @rp.rpc
    def busy(self, seconds: float) -> int:
        return self.counter.busy(seconds)

    @rp.rpc
    async def busy_via_self(self, seconds: float) -> int:
        return await self.busy(seconds)


class FourAtOnce(rp.Worker[None]):
    max_thread_concurrency = 4

    async def init_worker_state(self, init_arg: None) -> None:
        self.counter = Counter()

    @rp.rpc
    def busy(self, seconds: float) -> int:
        return self.counter.busy(seconds)


class Sleeper(rp.Worker[None]):
    sleeping = False

    @rp.rpc
    def sleep(self, seconds: float) -> None:
        self.sleeping = True
        time.sleep(seconds)

    @rp.rpc
    async def is_sleeping(self) -> bool:
        return self.sleeping


@pytest.mark.timeout(30)
async def test_every_kind_called_as_a_method_inside_the_worker() -> None:
    async with await SelfCalls.spawn(None) as w:
        got = await bounded(w.run(SelfCalls.all_via_self), 15.0, "all_via_self")
        assert got == [9, 3, 4, 5, 1, 0, 1, 2, 1, 2, 1]


@pytest.mark.timeout(30)
async def test_a_plain_def_called_via_self_takes_turns_with_remote_calls() -> None:
    async with await SelfCalls.spawn(None) as w:
        calls = [w.run(SelfCalls.busy, 0.2), w.run(SelfCalls.busy_via_self, 0.2),
                 w.run(SelfCalls.busy_via_self, 0.2)]
        assert max(await bounded(asyncio.gather(*calls), 15.0, "busy calls")) == 1


@pytest.mark.timeout(30)
async def test_max_thread_concurrency_lets_plain_defs_overlap() -> None:
    async with await FourAtOnce.spawn(None) as w:
        # Each call sleeps long enough for all four to be in flight at once.
        results = await bounded(
            asyncio.gather(*(w.run(FourAtOnce.busy, 1.0) for _ in range(4))), 15.0, "busy")
        assert max(results) >= 2  # they overlapped (4 threads; 2 leaves room for a slow box)
        assert max(results) <= 4


def test_max_thread_concurrency_must_be_a_positive_int() -> None:
    with pytest.raises(TypeError, match=r"Bad\.max_thread_concurrency must be a positive int"):
        class Bad(rp.Worker[None]):
            max_thread_concurrency = 0


@pytest.mark.timeout(30)
async def test_a_worker_busy_in_a_plain_def_closes_promptly() -> None:
    w = await Sleeper.spawn(None)
    pid = w.pid
    call = asyncio.ensure_future(w.run(Sleeper.sleep, 60.0))
    try:
        deadline = time.monotonic() + 10.0
        while not await w.run(Sleeper.is_sleeping):
            assert time.monotonic() < deadline, "the plain def never started"
            await asyncio.sleep(0.02)
        started = time.monotonic()
        await bounded(w.close(), 15.0, "close")
        took = time.monotonic() - started
        assert took < 4.0, f"close took {took:.1f} s (the kill grace is 5 s)"
        assert pid not in descendants(os.getpid())
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
