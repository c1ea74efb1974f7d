"""rp.WorkerPool and rp.Managed with real worker processes."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import rpc_parallel as rp

from ..workers.support import alive, bounded, gone, wait_until
from .functions import Adder
from .test_map_reduce import worker_pids

# ---------------------------------------------------------------------- WorkerPool


async def test_pool_runs_on_the_least_loaded_worker_and_closes_them_all() -> None:
    async with rp.WorkerPool(Adder, 100, 2) as pool:
        assert len(pool) == 2
        pids = {h.pid for h in pool.workers}
        assert len(pids) == 2
        assert await pool.run(Adder.add, 1) == 101
        # Two long calls at once: the second goes to the idle worker.
        first = asyncio.ensure_future(pool.run(Adder.hold, 0.5))
        second = asyncio.ensure_future(pool.run(Adder.hold, 0.5))
        assert {await first, await second} == pids
        assert sorted(await asyncio.gather(*(pool.submit(Adder.add, x) for x in range(50)))) == [
            x + 100 for x in range(50)
        ]
        reader = await pool.run(Adder.count, 3)
        assert [x async for x in reader] == [100, 101, 102]
    for pid in pids:
        await gone(pid)
    with pytest.raises(rp.ConnectionClosed, match="closed"):
        await pool.run(Adder.add, 1)


async def test_pool_refuses_bad_sizes_and_a_failed_spawn_leaves_nothing() -> None:
    with pytest.raises(ValueError, match="positive"):
        rp.WorkerPool(Adder, 1, 0)
    with pytest.raises(rp.ProtocolError):
        async with rp.WorkerPool(Adder, "not an int", 2):  # type: ignore[misc]
            pass
    assert not worker_pids()


# ---------------------------------------------------------------------- Managed


async def test_managed_spawns_on_first_use_and_respawns_after_a_death() -> None:
    failures: list[rp.WorkerFailure] = []
    respawned: list[rp.WorkerHandle[Adder]] = []
    async with rp.Managed(Adder, 5, on_failure=failures.append,
                          on_respawn=respawned.append) as managed:
        assert managed.handle is None and not worker_pids()  # nothing until the first call
        assert await managed.run(Adder.add, 1) == 6
        first = await managed.run(Adder.pid)
        with pytest.raises(rp.WorkerDied):
            await bounded(managed.run(Adder.die), 10.0, "a call on a dying worker")
        await wait_until(lambda: bool(failures), 10.0, "on_failure to be told")
        assert await managed.run(Adder.add, 2) == 7  # a new worker
        second = await managed.run(Adder.pid)
        assert second != first and not alive(first)
        assert [h.pid for h in respawned] == [second]
        # A death between calls (SIGKILL while idle): the next call just gets a new worker.
        os.kill(second, signal.SIGKILL)
        await wait_until(lambda: len(failures) == 2, 10.0, "on_failure to be told again")
        assert await managed.run(Adder.add, 3) == 8
        assert len(respawned) == 2 and respawned[-1].pid != second
    await gone(respawned[-1].pid)
    with pytest.raises(rp.ConnectionClosed):
        await managed.run(Adder.add, 1)


async def test_managed_close_before_any_call_spawns_nothing() -> None:
    managed = rp.Managed(Adder, 0)
    await managed.close()
    assert not worker_pids()


def _cut(managed: rp.Managed[Adder]) -> None:
    """Drop Managed's connection at the transport (no close message, no goodbye: what a
    broken socket looks like to both ends)."""
    connection = managed._connection
    assert connection is not None
    transport = connection._connection._transport
    assert transport is not None
    transport.abort()


async def test_managed_reconnects_to_a_live_worker_after_a_dropped_connection() -> None:
    async with rp.Managed(Adder, 5) as managed:
        pid = await managed.run(Adder.pid)
        # A call in flight when the connection drops: the worker lives, so it is not a death.
        held = asyncio.ensure_future(managed.run(Adder.hold, 30.0))
        await wait_until(lambda: managed._connection is not None
                         and bool(managed._connection._connection._outgoing), 10.0,
                         "the held call to be sent")
        _cut(managed)
        with pytest.raises(rp.ConnectionClosed) as caught:
            await bounded(held, 10.0, "the call in flight on the dropped connection")
        assert not isinstance(caught.value, rp.WorkerDied)
        assert "alive" in str(caught.value) and "reconnects" in str(caught.value)
        # The next call reconnects to the same worker, which never stopped.
        assert await managed.run(Adder.add, 1) == 6
        assert await managed.run(Adder.pid) == pid and alive(pid)
        assert managed.reconnects == 1
        # A drop between calls: the next call just reconnects.
        _cut(managed)
        assert await bounded(managed.run(Adder.pid), 10.0, "a call after a drop") == pid
        assert managed.reconnects == 2
        assert managed.handle is not None and managed.handle.pid == pid
    await gone(pid)


async def test_managed_respawns_after_a_sigkill_with_a_call_in_flight() -> None:
    async with rp.Managed(Adder, 5) as managed:
        pid = await managed.run(Adder.pid)
        held = asyncio.ensure_future(managed.run(Adder.hold, 30.0))
        await wait_until(lambda: managed._connection is not None
                         and bool(managed._connection._connection._outgoing), 10.0,
                         "the held call to be sent")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(rp.WorkerDied) as caught:
            await bounded(held, 10.0, "the call in flight on the killed worker")
        assert caught.value.signal == signal.SIGKILL
        second = await managed.run(Adder.pid)
        assert second != pid and not alive(pid)
        assert managed.reconnects == 0
    await gone(second)


async def test_managed_that_cannot_reconnect_to_a_live_worker_says_so() -> None:
    async with rp.Managed(Adder, 5) as managed:
        pid = await managed.run(Adder.pid)
        assert managed.handle is not None
        await managed.handle.close_server()  # the worker accepts no new connection
        _cut(managed)
        with pytest.raises(rp.ConnectionClosed, match=r"cannot reconnect.*alive") as caught:
            await bounded(managed.run(Adder.pid), 20.0, "a call that cannot reconnect")
        assert not isinstance(caught.value, rp.WorkerDied)
        assert alive(pid) and managed.reconnects == 0  # not taken for dead: not respawned
    await gone(pid)
