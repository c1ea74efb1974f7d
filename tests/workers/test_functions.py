"""Deliverable 1: every function kind through a spawned worker process."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

import rpc_parallel as rp
from rpc_parallel.rpc import frames
from rpc_parallel.rpc.connection import CALL_WRITE_BYTES, CALLS_PER_WRITE

from .support import SHORT, alive, bounded
from .workers import Echo


async def test_rpc_with_args_kwargs_and_defaults() -> None:
    async with await Echo.spawn(100) as w:
        assert await w.run(Echo.add, 1) == 111
        assert await w.run(Echo.add, 1, 2) == 103
        assert await w.run(Echo.add, 1, y=2) == 103
        assert await w.run(Echo.add, x=1, y=2, scale=3) == 109
        assert await w.run(Echo.add, 1, scale=2) == 122
        results = await asyncio.gather(*(w.run(Echo.add, i, 0) for i in range(200)))
        assert results == [i + 100 for i in range(200)]
        assert await asyncio.gather(*(w.submit(Echo.add, i, 0) for i in range(50))) == [
            i + 100 for i in range(50)
        ]
        with pytest.raises(TypeError):
            await w.run(Echo.add, 1, nope=3)  # type: ignore[call-arg]


@pytest.mark.parametrize("large", [False, True], ids=["CALLS_PER_WRITE small", "two large"])
async def test_calls_started_back_to_back_are_written_before_the_loop_runs_again(
    large: bool,
) -> None:
    """Decision 0032: of ``CALLS_PER_WRITE`` calls, or of calls holding more than
    ``CALL_WRITE_BYTES``, submitted without yielding to the event loop, some leave at once,
    so the worker answers them while the caller is still busy: its answers are readable on
    the socket before this loop has run again."""
    async with await Echo.spawn(0) as w:
        assert await w.run(Echo.add, 0, 0) == 0
        connection = w._ready
        assert connection is not None and connection._transport is not None
        fd = connection._transport.get_extra_info("socket").fileno()
        futures: list[asyncio.Future[Any]]
        if large:
            key = "K" * (CALL_WRITE_BYTES * 2 // 3)  # (no such environment variable)
            futures = [w.submit(Echo.environment, key) for _ in range(2)]
            expected: list[object] = [None, None]
        else:
            futures = [w.submit(Echo.add, i, 0) for i in range(CALLS_PER_WRITE)]
            expected = list(range(CALLS_PER_WRITE))
        # This thread blocks (the loop can neither flush the rest nor read) until an answer
        # is waiting in the socket: a RESPONSE frame, not a heartbeat, seen without reading.
        with socket.socket(fileno=os.dup(fd)) as sock:  # (to peek: the loop's own won't)
            answered = _answer_waits(sock, deadline=time.monotonic() + 10.0)
        assert answered, "no answer within 10 s: the calls were not written"
        assert await asyncio.gather(*futures) == expected


def _answer_waits(sock: socket.socket, deadline: float) -> bool:
    """Whether a RESPONSE frame shows up in ``sock``'s received bytes before ``deadline``
    (looked at with ``MSG_PEEK``: the connection still reads every byte later)."""
    while time.monotonic() < deadline:
        if not select.select([sock.fileno()], [], [], 0.5)[0]:
            continue
        data = sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        position = 0
        while position + frames.HEADER_SIZE <= len(data):
            length, kind, _, _ = frames.HEADER.unpack_from(data, position)
            if kind == frames.RESPONSE:
                return True
            position += 4 + length
        time.sleep(0.01)  # Only heartbeats so far (left unread): look again.
    return False


async def test_pipe_reads_and_abort_closes_the_generator() -> None:
    async with await Echo.spawn(5) as w:
        reader = await w.run(Echo.count, 4)
        assert [x async for x in reader] == [5, 6, 7, 8]
        reader = await w.run(Echo.count, 3, step=10)
        assert [x async for x in reader] == [5, 15, 25]
        assert [x async for x in await w.run(Echo.count, 0)] == []

        endless = await w.run(Echo.endless)
        first = [await anext(endless) for _ in range(5)]
        assert first == [0, 1, 2, 3, 4]
        await endless.aclose()
        # The worker's generator ran its finally block: the abort reached it.
        assert await w.run(Echo.stream_was_closed, 10.0) is True
        # The worker goes on serving.
        assert await w.run(Echo.add, 0, 0) == 5


async def test_state_function() -> None:
    async with await Echo.spawn(1000) as w:
        initial, updates = await w.run(Echo.counter, 7)
        assert initial == 1007
        assert [u async for u in updates] == ["update 8", "update 9", "update 10"]


async def test_one_way_is_delivered_in_order() -> None:
    async with await Echo.spawn(0) as w:
        for word in ("a", "b", "c"):
            await w.run(Echo.remember, word)  # returns once sent
        assert await w.run(Echo.recall) == ["a", "b", "c"]


async def test_reverse_pipe_with_async_generator_and_plain_list() -> None:
    async def values(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async with await Echo.spawn(0) as w:
        assert await w.run(Echo.total, 2, values(100)) == 2 * sum(range(100))
        assert await w.run(Echo.total, 3, [1, 2, 3]) == 18  # type: ignore[call-overload]
        assert await w.run(Echo.total, 1, values(0)) == 0
        assert await w.run(Echo.total, scale=5, values=values(3)) == 15


async def test_name_and_version() -> None:
    assert Echo.renamed.name == "echo/renamed"
    assert Echo.renamed.version == 7
    assert Echo.add.name == "Echo.add"
    assert Echo.add.version == 1
    async with await Echo.spawn(0) as w:
        assert await w.run(Echo.renamed) == "renamed"


async def test_plain_def_runs_in_a_thread_while_heartbeats_go_on() -> None:
    """A plain def busy for 2x the heartbeat timeout is not declared dead, and the loop
    answers other calls meanwhile."""
    async with await Echo.spawn(3) as w:
        assert await w.run(Echo.add_in_thread, 4) == (7, False)
        busy = asyncio.ensure_future(w.run(Echo.spin, 2 * SHORT.heartbeat_timeout))
        # While it spins, the worker's loop answers (it is not blocked by the thread).
        for _ in range(5):
            assert await bounded(w.run(Echo.add, 1, 1), 1.0, "a call beside spin") == 5
        assert await bounded(busy, 30.0, "spin") > 0
        assert await w.run(Echo.pid) == w.pid
        assert alive(w.pid)


async def test_run_refuses_something_that_is_not_a_worker_function() -> None:
    async with await Echo.spawn(0) as w:
        with pytest.raises(TypeError, match="worker function"):
            await w.run(len, [1])  # type: ignore[call-overload]


async def test_errors_derive_from_rp_error() -> None:
    for error in (rp.RemoteError, rp.WorkerDied, rp.SpawnError, rp.ProtocolError,
                  rp.WorkerFailure, rp.ConnectionClosed):
        assert issubclass(error, rp.Error)
