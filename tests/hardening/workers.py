"""Worker classes for the hardening tests (an importable module, so no ``start_app``)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import rpc_parallel as rp

SURROGATE_TEXT = b"caf\xe9.csv".decode("utf-8", "surrogateescape")
"""A file name as ``os.listdir`` returns it for undecodable bytes: a lone surrogate."""

HUGE = 200_000
"""Characters of a message over the limit the encoding tests set (64 KiB)."""

ODD_KINDS = ("surrogate", "str_raises", "huge")


class BadStr(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ exploded")


def odd_error(kind: str) -> Exception:
    if kind == "surrogate":
        return ValueError(f"cannot read {SURROGATE_TEXT}")
    if kind == "str_raises":
        return BadStr("unprintable")
    if kind == "huge":
        return ValueError("x" * HUGE)
    raise AssertionError(kind)


class Odd(rp.Worker[None]):
    """Functions of every kind that fail with an error that is hard to encode."""

    async def init_worker_state(self, _: None) -> None:
        self.closed_generators = 0
        self.received = 0

    @rp.rpc
    async def ping(self) -> int:
        return os.getpid()

    @rp.rpc
    async def rpc_after_await(self, kind: str) -> int:
        await asyncio.sleep(0)
        raise odd_error(kind)

    @rp.rpc
    async def rpc_before_await(self, kind: str) -> int:
        raise odd_error(kind)

    @rp.rpc
    def plain_rpc(self, kind: str) -> int:
        raise odd_error(kind)

    @rp.pipe
    async def pipe_fails(self, kind: str) -> AsyncIterator[int]:
        yield 1
        raise odd_error(kind)

    @rp.reverse_pipe
    async def reverse_fails(self, kind: str, values: AsyncIterator[int]) -> int:
        async for _ in values:
            raise odd_error(kind)
        return 0

    @rp.one_way
    async def one_way_fails(self, kind: str) -> None:
        raise odd_error(kind)

    @rp.rpc
    async def background_fails(self, kind: str) -> None:
        async def fail() -> None:
            await asyncio.sleep(0.01)
            raise odd_error(kind)

        self.start_background(fail(), name="odd background")

    # ----- results and items built from user data

    @rp.rpc
    async def surrogate_result(self) -> str:
        return SURROGATE_TEXT

    @rp.pipe
    async def surrogate_items(self) -> AsyncIterator[str]:
        yield "fine"
        yield SURROGATE_TEXT

    @rp.rpc
    async def huge_result(self) -> str:
        return "y" * HUGE

    # ----- odd values as arguments

    @rp.rpc
    async def echo_int(self, x: int) -> int:
        return x

    @rp.rpc
    async def echo_str(self, s: str) -> str:
        return s

    @rp.rpc
    async def echo_any(self, value: Any) -> int:
        return 0

    @rp.rpc
    async def echo_nested(self, value: list[Any]) -> int:
        return 0

    @rp.reverse_pipe
    async def consume(self, values: AsyncIterator[int]) -> int:
        n = 0
        async for _ in values:
            n += 1
        return n

    @rp.reverse_pipe
    async def stall(self, values: AsyncIterator[int]) -> int:
        """Reads one item, then nothing more: the caller's stream waits for credit."""
        async for _ in values:
            await asyncio.sleep(3600)
        return 0

    # ----- streams that leak when dropped

    @rp.pipe
    async def tracked(self) -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"z" * 65536
        finally:
            self.closed_generators += 1

    @rp.rpc
    async def closed_count(self) -> int:
        return self.closed_generators

    @rp.rpc
    async def task_count(self) -> int:
        return len(asyncio.all_tasks())

    # ----- one-way backpressure

    @rp.one_way
    async def slow_one_way(self, seconds: float) -> None:
        self.received += 1
        await asyncio.sleep(seconds)

    @rp.rpc
    async def received_count(self) -> int:
        return self.received

    # ----- blocking the event loop

    @rp.rpc
    async def block_loop(self, seconds: float) -> str:
        time.sleep(seconds)  # noqa: ASYNC251 - an async def that never awaits, on purpose
        return "done"


class SlowInit(rp.Worker[str]):
    """``init_worker_state`` writes the worker's pid to the file named by the init argument,
    then takes a long time (the phase the fault matrix calls "init")."""

    async def init_worker_state(self, pid_file: str) -> None:
        Path(pid_file).write_text(str(os.getpid()))  # noqa: ASYNC240
        await asyncio.sleep(60)

    @rp.rpc
    async def ping(self) -> str:
        return "pong"
