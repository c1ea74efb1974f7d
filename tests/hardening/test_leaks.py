"""#8.2, #8.4, #8.5, and the spawn/close cycle count: nothing grows, nothing is blamed wrongly.

- a pipe reader dropped without ``aclose()`` aborts its stream (the generator's ``finally``
  runs in the worker; the master's memory does not grow per dropped reader);
- one-way calls have backpressure (the worker never holds an unbounded number of them);
- a stalled event loop is blamed on the side that stalled, naming the function running;
- spawn/call/close cycles leave fds, threads, processes and temp files exactly as before.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time

import pytest

import rpc_parallel as rp

from ..workers.support import SHORT, bounded, no_zombies
from ..workers.workers import Echo
from .support import Snapshot, poll, rss_bytes, settle
from .workers import Odd

QUIET = {"redirect_stdout": rp.DevNull(), "redirect_stderr": rp.DevNull()}


@pytest.mark.xfail(strict=True, reason="#8.2: a dropped reader never aborts its stream")
@pytest.mark.timeout(30)
async def test_dropped_pipe_reader_aborts_the_stream() -> None:
    async with await Odd.spawn(None, **QUIET) as w:
        tasks_before = await w.run(Odd.task_count)
        reader = await w.run(Odd.tracked)
        async for _ in reader:
            break
        del reader
        gc.collect()

        async def closed() -> bool:
            return await w.run(Odd.closed_count) == 1

        deadline = time.monotonic() + 10.0
        while not await closed():
            assert time.monotonic() < deadline, "the generator's finally never ran"
            gc.collect()
            await asyncio.sleep(0.05)
        assert await w.run(Odd.task_count) == tasks_before


@pytest.mark.xfail(strict=True, reason="#8.2: each dropped reader keeps ~1.5 MiB in the master")
@pytest.mark.timeout(60)
async def test_dropped_pipe_readers_do_not_grow_the_master() -> None:
    async with await Odd.spawn(None, **QUIET) as w:

        async def drop_one() -> None:
            reader = await w.run(Odd.tracked)
            async for _ in reader:
                break

        for _ in range(5):
            await drop_one()
        gc.collect()
        await asyncio.sleep(0)
        before = rss_bytes()
        for _ in range(40):
            await drop_one()
            gc.collect()
        await poll(lambda: rss_bytes() - before < 10 * 2**20, 10.0,
                   f"the master's RSS to stay within 10 MiB of {before >> 20} MiB "
                   f"(now {rss_bytes() >> 20} MiB after 40 dropped readers)")
        assert await w.run(Odd.closed_count) == 45


@pytest.mark.xfail(strict=True, reason="#8.4: one-way calls have no backpressure")
@pytest.mark.timeout(60)
async def test_one_way_calls_have_backpressure() -> None:
    """50,000 one-way calls to a slow function: the sender waits, the worker stays bounded."""
    w = await Odd.spawn(None, **QUIET)
    try:
        worker_rss = rss_bytes(w.pid)

        async def send_all() -> None:
            for _ in range(50_000):
                await w.run(Odd.slow_one_way, 600.0)

        sender = asyncio.ensure_future(send_all())
        done, _ = await asyncio.wait([sender], timeout=8.0)
        assert not done, "50,000 one-way calls to a slow function were all 'sent' at once"
        running = await bounded(w.run(Odd.task_count), 10.0, "the worker's task count")
        assert running <= 10_000, f"the worker holds {running} tasks"
        assert rss_bytes(w.pid) - worker_rss < 64 * 2**20
    finally:
        await bounded(w.close(), 20.0, "close")
        if not sender.done():
            with pytest.raises(rp.Error):
                await bounded(sender, 10.0, "the waiting sender to be released by close")


@pytest.mark.xfail(strict=True, reason="#8.5: a stalled master blames the worker")
@pytest.mark.timeout(60)
async def test_stalled_master_loop_is_blamed_on_the_master() -> None:
    w = await Echo.spawn(0, **QUIET)
    try:
        assert await w.run(Echo.add, 0, 0) == 0
        time.sleep(SHORT.heartbeat_timeout * 2.5)  # noqa: ASYNC251 - blocks this loop on purpose
        try:
            await bounded(w.run(Echo.add, 0, 0), 10.0, "a call after the stall")
        except rp.Error as error:
            text = str(error)
            assert "master" in text and ("stall" in text or "blocked" in text), text
            assert "s" in text  # for how long
    finally:
        await bounded(w.close(), 10.0, "close")


@pytest.mark.xfail(strict=True, reason="#8.5: a worker whose loop is blocked: no blame, no name")
@pytest.mark.timeout(60)
async def test_stalled_worker_loop_names_the_side_and_the_function() -> None:
    w = await Odd.spawn(None, **QUIET)
    try:
        with pytest.raises(rp.WorkerDied) as caught:
            await bounded(w.run(Odd.block_loop, SHORT.heartbeat_timeout * 3), 15.0,
                          "a call that blocks the worker's loop")
        text = str(caught.value)
        assert "Odd.block_loop" in text
        assert "event loop" in text and ("stall" in text or "blocked" in text), text
    finally:
        await bounded(w.close(), 10.0, "close")


@pytest.mark.timeout(120)
async def test_spawn_call_close_cycles_leave_everything_as_it_was(private_tmp: str) -> None:
    async def one_cycle() -> None:
        async with await Echo.spawn(0, **QUIET) as w:
            assert await w.run(Echo.add, 1, 1) == 2
            assert await w.run(Echo.add_in_thread, 1) == (1, False)
            assert [x async for x in await w.run(Echo.count, 3)] == [0, 1, 2]
            _, updates = await w.run(Echo.counter, 0)
            assert [u async for u in updates] == ["update 1", "update 2", "update 3"]
            await w.run(Echo.remember, "x")
            assert await w.run(Echo.total, 2, [1, 2]) == 6
            with pytest.raises(rp.RemoteError):
                await w.run(Echo.fail, "no")
            reader = await w.run(Echo.endless)
            await anext(reader)
            await reader.aclose()

    await one_cycle()
    before = Snapshot.take()
    await settle(before, 10.0, "after the warm-up")
    before = Snapshot.take()
    for _ in range(15):
        await one_cycle()
    await settle(before, 10.0, "after 15 spawn/close cycles")
    await no_zombies()


@pytest.mark.timeout(60)
async def test_killed_workers_leave_everything_as_it_was(private_tmp: str) -> None:
    async def one_cycle() -> None:
        w = await Echo.spawn(0, **QUIET)
        call = asyncio.ensure_future(w.run(Echo.sleep, 60.0))
        await w.run(Echo.add, 0, 0)
        os.kill(w.pid, signal.SIGKILL)
        with pytest.raises(rp.WorkerDied):
            await bounded(call, 10.0, "the call on a killed worker")
        await w.close()

    await one_cycle()
    before = Snapshot.take()
    await settle(before, 10.0, "after the warm-up")
    before = Snapshot.take()
    for _ in range(10):
        await one_cycle()
    await settle(before, 10.0, "after 10 killed workers")
