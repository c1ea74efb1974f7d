"""rp.map_reduce.MapPool: map workers started once and reused by several maps (decision 0023),
with real worker processes and real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import rpc_parallel as rp
from rpc_parallel import map_reduce as mr

from ..workers.support import alive, bounded, gone, wait_until
from .functions import (
    AddOne,
    DieOnce,
    FailAt,
    FindTen,
    InitFails,
    Offset,
    Slow,
    SlowInit,
    Spell,
    StallFrom,
    Sum,
    Tick,
    WhichPid,
)
from .test_map_reduce import Counting, no_workers, worker_pids

TWO = mr.Config(local=2)


async def test_one_pool_serves_several_maps_of_different_functions_on_the_same_workers() -> None:
    async with TWO.open() as pool:
        assert len(pool) == 2
        pids = set(worker_pids())
        assert len(pids) == 2
        # Each map runs its function's init(param) in the workers: a new param each time.
        for offset in (1, 1000):
            assert [y async for y in mr.map(pool, range(3000), Offset, offset)] == [
                x + offset for x in range(3000)]
        assert {y async for y in mr.map(pool, range(100), WhichPid, None)} == pids
        pairs = [p async for p in mr.map_unordered(pool, range(500), AddOne, None)]
        assert sorted(pairs) == [(i, i + 1) for i in range(500)]
        assert await mr.map_reduce(pool, range(600), Spell, None) == "".join(
            f"{x}," for x in range(600))
        assert await mr.map_reduce_commutative(pool, range(5000), Sum, None) == sum(range(5000))
        assert await mr.find_map(pool, range(100), FindTen, 30) == 3000
        assert await mr.map_reduce(pool, [], Sum, None) is None
        assert set(worker_pids()) == pids  # no worker was spawned for any of these maps
    await no_workers()


async def test_a_map_the_pool_has_measured_before_starts_without_single_input_batches() -> None:
    """Decision 0023: a pool remembers the cost per item that a map of a function with a
    param measured, so the next such map sizes its batches from it at once; a map of the
    function with another param measures again with single inputs first."""
    async def sizes(pool: mr.MapPool, param: int) -> list[int]:
        run = mr._Run(pool, Offset, param, range(20_000), retries=1, progress=False,
                      reduce=False)
        async with run:
            found = sorted([(batch.start, len(batch.items)) async for batch, _ in run.batches()])
        return [size for _, size in found]

    async with TWO.open() as pool:
        first = await sizes(pool, 1)
        assert first[:2] == [1, 1] and sum(first) == 20_000, first
        again = await sizes(pool, 1)
        assert 1 not in again[:-1] and again[0] > 1 and sum(again) == 20_000, again
        assert len(again) < len(first), (again, first)
        other = await sizes(pool, 2)
        assert other[:2] == [1, 1], other
    await no_workers()


async def test_two_maps_at_once_share_the_pool() -> None:
    async with TWO.open() as pool:
        async def run(offset: int) -> list[int]:
            return [y async for y in mr.map(pool, range(2000), Offset, offset)]

        first, second = await bounded(asyncio.gather(run(1), run(-1)), 30.0, "two maps")
        assert first == [x + 1 for x in range(2000)]
        assert second == [x - 1 for x in range(2000)]
    await no_workers()


async def test_leaving_a_map_early_stops_its_work_but_keeps_the_workers() -> None:
    async with TWO.open() as pool:
        pids = set(worker_pids())
        source = Counting()
        async for y in mr.map(pool, source, Slow, None):
            if y == 3:
                break
        # The workers were told to stop: the next map is not held up behind the rest of the
        # first one's batches (Slow takes 50 ms an input).
        started = time.monotonic()
        assert [y async for y in mr.map(pool, range(10), AddOne, None)] == list(range(1, 11))
        assert time.monotonic() - started < 5.0
        assert await mr.find_map(pool, Counting(), FindTen, 20) == 2000
        assert set(worker_pids()) == pids
    await no_workers()


async def test_leaving_a_map_ends_a_large_running_batch_after_its_current_input(
        tmp_path: Path) -> None:
    async with TWO.open() as pool:
        marker = tmp_path / "stalled"
        # Thousands of instant inputs make batches of thousands; then each input takes 0.5 s:
        # a batch holding them runs for minutes unless the stop ends it.
        reading = asyncio.ensure_future(
            mr.map(pool, range(1_000_000), StallFrom, str(marker)).collect())
        await wait_until(marker.exists, 30.0, "a worker to map a slow input")
        reading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reading
        # The running batches ended after their current input: the next map is not held up.
        started = time.monotonic()
        outputs = await bounded(mr.map(pool, range(10), AddOne, None).collect(), 20.0, "map")
        assert outputs == list(range(1, 11))
        assert time.monotonic() - started < 5.0
    await no_workers()


async def test_a_failing_map_or_init_leaves_the_pool_usable() -> None:
    async with TWO.open() as pool:
        pids = set(worker_pids())
        with pytest.raises(rp.RemoteError) as caught:
            async for _ in mr.map(pool, range(100), FailAt, 37):
                pass
        assert caught.value.index == 37  # type: ignore[attr-defined]
        assert caught.value.function == "FailAt.map"
        with pytest.raises(rp.RemoteError, match="no model file") as init_error:
            async for _ in mr.map(pool, range(10), InitFails, None):
                pass
        assert init_error.value.function == "InitFails.init"
        assert [y async for y in mr.map(pool, range(5), AddOne, None)] == [1, 2, 3, 4, 5]
        assert set(worker_pids()) == pids
    await no_workers()


async def test_batches_sent_with_the_load_wait_in_the_worker_for_the_init_to_end() -> None:
    # A map on a pool does not wait for its function's load before sending batches: each
    # worker maps them once the init is done. An init failing is raised however many
    # inputs there are (none included); a map left while its init still runs leaves the
    # pool usable, and the next map waits behind that init only.
    async with TWO.open() as pool:
        assert [y async for y in mr.map(pool, range(5000), SlowInit, 0.2)] == [
            x + 1 for x in range(5000)]
        for inputs in ([], range(3)):
            with pytest.raises(rp.RemoteError, match="no model file") as caught:
                async for _ in mr.map(pool, inputs, InitFails, None):
                    pass
            assert caught.value.function == "InitFails.init"
        with pytest.raises(rp.RemoteError, match="no model file"):
            await mr.find_map(pool, range(10), InitFails, None)

        async def first(param: float) -> int:
            async for y in mr.map(pool, range(10), SlowInit, param):
                return y
            raise AssertionError("no output")

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(first(1.0), 0.1)
        started = time.monotonic()
        assert await bounded(first(0.0), 10.0, "the map after one left in its init") == 1
        assert time.monotonic() - started < 5.0
        assert [y async for y in mr.map(pool, range(3), AddOne, None)] == [1, 2, 3]
    await no_workers()


async def test_a_worker_of_the_pool_killed_mid_map_is_replaced(tmp_path: Path) -> None:
    async with TWO.open() as pool:
        outputs: list[int] = []
        victim = 0
        async for y in mr.map(pool, range(300), Tick, None):
            outputs.append(y)
            if len(outputs) == 20:
                victim = worker_pids()[0]
                os.kill(victim, signal.SIGKILL)
        assert outputs == [x + 1 for x in range(300)]
        await gone(victim)
        assert len(pool) == 2 and victim not in {h.pid for h in pool.workers}
        # A death by the map's own input: retried on the replacement, which has the map loaded.
        out = [y async for y in mr.map(pool, range(40), DieOnce, str(tmp_path / "died"))]
        assert out == [x * 2 for x in range(40)]
        assert all(alive(h.pid) for h in pool.workers)
    await no_workers()


async def test_a_pool_not_started_or_closed_is_refused_clearly() -> None:
    pool = TWO.open()
    with pytest.raises(rp.ConnectionClosed, match="not started"):
        async for _ in mr.map(pool, range(3), AddOne, None):
            pass
    assert not worker_pids()
    async with pool:
        assert [y async for y in mr.map(pool, range(3), AddOne, None)] == [1, 2, 3]
    with pytest.raises(rp.ConnectionClosed, match="closed"):
        await mr.map_reduce(pool, range(3), Sum, None)
    with pytest.raises(TypeError, match="Config or MapPool"):
        await mr.map_reduce(object(), range(3), Sum, None)  # type: ignore[arg-type]
    await no_workers()
