"""Deliverable 1: every function kind through a spawned worker process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import rpc_parallel as rp

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
