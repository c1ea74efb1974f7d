"""handle.run for an rpc respects the link's backpressure exactly as rpc.Connection.call does."""

from __future__ import annotations

import asyncio

import rpc_parallel as rp

from .support import bounded
from .workers import Echo


async def test_run_waits_while_writing_is_paused() -> None:
    w = await Echo.spawn(0)
    try:
        link = w._ready
        assert link is not None
        # The transport's signal: its write buffer is over the high-water mark.
        link.pause_writing()
        running = asyncio.ensure_future(w.run(Echo.add, 1, 2))
        # submit() does not wait for writing to resume; its answer comes after run()'s,
        # so once it is here run()'s answer has arrived too.
        assert await bounded(w.submit(Echo.add, 3, 4), 10.0, "a submitted call") == 7
        await asyncio.sleep(0)
        assert not running.done(), "run() returned while writing was paused"
        link.resume_writing()
        assert await bounded(running, 10.0, "run() after writing resumed") == 3
    finally:
        await w.close()


async def test_run_and_call_agree_on_errors_for_a_closed_handle() -> None:
    w = await Echo.spawn(0)
    await w.close()
    try:
        await w.run(Echo.add, 1, 2)
    except rp.ConnectionClosed as error:
        assert "closed" in str(error)
    else:
        raise AssertionError("run() on a closed handle succeeded")
