"""Map functions and workers for the map/pool tests (importable, as workers need)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import rpc_parallel as rp


class AddOne(rp.MapFunction[None, int, int]):
    async def map(self, x: int) -> int:
        return x + 1


class Offset(rp.MapFunction[int, int, int]):
    """Plain def methods: run in a thread of the worker."""

    def init(self, param: int) -> None:
        self.offset = param

    def map(self, x: int) -> int:
        return x + self.offset


class Jittery(rp.MapFunction[None, int, int]):
    """Later inputs finish sooner: completion order differs from input order."""

    async def map(self, x: int) -> int:
        await asyncio.sleep(0.002 * ((x * 7919) % 13))
        return x * 10


class Spell(rp.MapReduceFunction[None, int, str]):
    """Non-commutative: concatenation keeps input order only if only neighbours combine."""

    async def map(self, x: int) -> str:
        if x % 5 == 0:
            await asyncio.sleep(0.003)  # a slow input: later batches overtake it
        return f"{x},"

    async def combine(self, a: str, b: str) -> str:
        return a + b


class Sum(rp.MapReduceFunction[None, int, int]):
    def map(self, x: int) -> int:
        return x

    def combine(self, a: int, b: int) -> int:
        return a + b


class FindTen(rp.MapFunction[int, int, int | None]):
    """The hit is input ``param``; each map is slow enough that workers are busy."""

    def init(self, param: int) -> None:
        self.target = param

    def map(self, x: int) -> int | None:
        time.sleep(0.001)
        return x * 100 if x == self.target else None


class Slow(rp.MapFunction[None, int, int]):
    def map(self, x: int) -> int:
        time.sleep(0.05)
        return x


class FailAt(rp.MapFunction[int, int, int]):
    def init(self, param: int) -> None:
        self.bad = param

    async def map(self, x: int) -> int:
        if x == self.bad:
            raise KeyError(f"no such thing as {x}")
        return x


class CombineFails(rp.MapReduceFunction[None, int, int]):
    async def map(self, x: int) -> int:
        return x

    async def combine(self, a: int, b: int) -> int:
        raise ValueError("cannot combine")


class WrongOutput(rp.MapFunction[None, int, int]):
    async def map(self, x: int) -> int:
        return "not an int"  # type: ignore[return-value]


class DieOnce(rp.MapFunction[str, int, int]):
    """Input 7 kills the worker (os._exit) the first time it is mapped; ``param`` is the
    marker file that says it happened."""

    def init(self, param: str) -> None:
        self.marker = Path(param)

    def map(self, x: int) -> int:
        if x == 7 and not self.marker.exists():
            self.marker.write_text("died")
            os._exit(3)
        return x * 2


class DieAlways(rp.MapFunction[None, int, int]):
    def map(self, x: int) -> int:
        if x == 7:
            os._exit(4)
        return x


class Adder(rp.Worker[int]):
    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + self.offset

    @rp.rpc
    async def pid(self) -> int:
        return os.getpid()

    @rp.rpc
    async def hold(self, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return os.getpid()

    @rp.rpc
    async def die(self) -> None:
        os._exit(5)

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i + self.offset


class FirstSlow(rp.MapFunction[None, int, int]):
    """Input 0 takes half a second, the others are instant."""

    async def map(self, x: int) -> int:
        if x == 0:
            await asyncio.sleep(0.5)
        return x * 10


class Busy(rp.MapFunction[None, int, int]):
    """About 5 ms of CPU per input."""

    def map(self, x: int) -> int:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        return x


class Blob(rp.MapFunction[None, bytes, int]):
    async def map(self, x: bytes) -> int:
        return len(x)


class DieOnceSum(rp.MapReduceFunction[str, int, int]):
    """Like DieOnce, in a reduce: input 7 kills its worker the first time."""

    def init(self, param: str) -> None:
        self.marker = Path(param)

    def map(self, x: int) -> int:
        if x == 7 and not self.marker.exists():
            self.marker.write_text("died")
            os._exit(3)
        return x

    def combine(self, a: int, b: int) -> int:
        return a + b


class HitThenStall(rp.MapFunction[None, int, int | None]):
    """Input 0 is the hit after 0.3 s; every other input spins the CPU for a minute."""

    def map(self, x: int) -> int | None:
        if x == 0:
            time.sleep(0.3)
            return 42
        end = time.perf_counter() + 60.0
        while time.perf_counter() < end:
            pass
        return None


class Tick(rp.MapFunction[None, int, int]):
    """10 ms per input."""

    def map(self, x: int) -> int:
        time.sleep(0.01)
        return x + 1


class InitFails(rp.MapFunction[None, int, int]):
    def init(self, param: None) -> None:
        raise RuntimeError("no model file")

    def map(self, x: int) -> int:
        return x


class WhichPid(rp.MapFunction[None, int, int]):
    """The pid of the worker that mapped the input (2 ms each, so every worker gets some)."""

    async def map(self, x: int) -> int:
        await asyncio.sleep(0.002)
        return os.getpid()


class SlowInit(rp.MapFunction[float, int, int]):
    """``init`` takes ``param`` seconds; ``map`` needs what it sets (so a batch mapped
    before the init ended would fail)."""

    async def init(self, param: float) -> None:
        await asyncio.sleep(param)
        self.step = 1

    def map(self, x: int) -> int:
        return x + self.step


class StallFrom(rp.MapFunction[str, int, int]):
    """Inputs below 20,000 are instant (so batches grow to thousands of inputs); from 20,000
    on each takes 0.5 s, and the first such input creates the file named by ``param``."""

    def init(self, param: str) -> None:
        self.marker = Path(param)

    def map(self, x: int) -> int:
        if x < 20_000:
            return x
        self.marker.touch()
        time.sleep(0.5)
        return x
