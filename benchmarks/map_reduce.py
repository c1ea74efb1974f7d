"""rp.map_reduce against multiprocessing, in one run, rounds interleaved (issue 10's rows).

    PYTHONPATH=src .venv/bin/python benchmarks/map_reduce.py [--workers N] [--rounds R] [--quick]
        [--only tiny|cpu|find|rss]

Rows (times are wall seconds; medians of ``--rounds`` interleaved rounds, ratios from them):

- tiny: 100k items ``x + 1``. ``rp collect``: ``await rp.map_reduce.map(...).collect()`` over
  an open ``MapPool`` (workers running, as a started ``Pool`` is; the outputs as one list, as
  ``Pool.map`` gives them); ``rp warm``: the same map with every output taken by ``async for``
  (about 50 ns an item of CPython's async iteration on top); against a started
  ``multiprocessing.Pool``: ``Pool.map`` with the best chunksize of a calibration pass (its
  default included; medians of 5 interleaved rounds each) and ``Pool.imap`` with its default
  chunksize (1); ``*_paired`` ratios are the medians of the per-round ratios.
  ``rp cold`` (a ``Config``: spawn counted) against ``Pool`` start + map for reference.
- cpu: 2,000 items of 5 ms CPU each. Wall ÷ ideal (ideal = 2,000 x 5 ms ÷ workers) and wall ÷
  work (work = the items' own measured durations ÷ workers: on a shared machine the items
  themselves run slower, which is not the library's doing); ``rp warm``, ``rp cold`` (a
  ``Config``: spawn counted; the map starts on the first worker up; ``spawn_s`` is an
  ``open()`` of all of them, apart) and ``Pool.map`` with chunksize 1 (its best for costly
  items).
- find: ``find_map`` whose hit is the 10th of 1 million items, on the open pool and cold.
- rss: 1 million items through ``map`` on the open pool: the master's resident memory growth.

The machine may be shared: read ratios, not absolutes. ``--quick`` runs a tenth of each size.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.pool
import statistics
import time
from collections.abc import Callable, Iterator

import rpc_parallel as rp

CPU_SECONDS = 0.005


def inc(x: int) -> int:
    return x + 1


def spin(x: int) -> int:
    end = time.perf_counter() + CPU_SECONDS
    while time.perf_counter() < end:
        pass
    return x


def spin_timed(x: int) -> float:
    """``spin``, returning how long it took (more than 5 ms when the process was preempted)."""
    start = time.perf_counter()
    spin(x)
    return time.perf_counter() - start


class Inc(rp.MapFunction[None, int, int]):
    def map(self, x: int) -> int:
        return x + 1


class SpinTimed(rp.MapFunction[None, int, float]):
    def map(self, x: int) -> float:
        return spin_timed(x)


class FindTenth(rp.MapFunction[None, int, int | None]):
    def map(self, x: int) -> int | None:
        return x if x == 9 else None


def rss_bytes() -> int:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * 4096


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


async def in_thread(work: Callable[[], object]) -> float:
    """``timed(work)`` in a thread: the multiprocessing side blocks, and the master's event
    loop must stay free meanwhile (its workers' heartbeats)."""
    return await asyncio.to_thread(timed, work)


async def atimed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    result = work()
    if asyncio.iscoroutine(result):
        await result
    return time.perf_counter() - start


async def rp_map(target: rp.map_reduce.Config | rp.map_reduce.MapPool, items: list[int],
                 function: type[rp.MapFunction[None, int, int]], expected: list[int]) -> None:
    out = [y async for y in rp.map_reduce.map(target, items, function, None)]
    if out != expected:
        raise AssertionError(f"{function.__name__}: wrong results")


async def rp_collect(target: rp.map_reduce.Config | rp.map_reduce.MapPool, items: list[int],
                     function: type[rp.MapFunction[None, int, int]],
                     expected: list[int]) -> None:
    out = await rp.map_reduce.map(target, items, function, None).collect()
    if out != expected:
        raise AssertionError(f"{function.__name__}: wrong results")


def check(out: list[int], expected: list[int], what: str) -> None:
    if out != expected:
        raise AssertionError(f"{what}: wrong results")


def best_chunksize(pool: multiprocessing.pool.Pool, items: list[int], workers: int) -> int | None:
    """The chunksize (None: Pool.map's default) that maps ``items`` fastest: the median of 5
    interleaved rounds each (a shared machine makes a single timing, or a best of 3, pick a
    chunksize by luck)."""
    n = len(items)
    choices: list[int | None] = [None, max(1, n // workers), max(1, n // (2 * workers)),
                                 max(1, n // (16 * workers)), 1000]
    seconds: dict[int | None, list[float]] = {c: [] for c in choices}
    for _ in range(5):
        for c in choices:
            seconds[c].append(timed(lambda c=c: pool.map(inc, items, chunksize=c)))
    return min(choices, key=lambda c: statistics.median(seconds[c]))


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {k: statistics.median(v) for k, v in samples.items()}


async def tiny(config: rp.map_reduce.Config, pool: rp.map_reduce.MapPool,
               mp: multiprocessing.pool.Pool, n: int, rounds: int) -> dict[str, object]:
    items = list(range(n))
    expected = [x + 1 for x in items]
    chunk = await asyncio.to_thread(best_chunksize, mp, items, config.workers())
    await rp_map(pool, items, Inc, expected)  # warm: the function's first load
    samples: dict[str, list[float]] = {"rp_collect": [], "rp_warm": [], "pool_map": [],
                                       "pool_imap": []}
    for _ in range(rounds):
        samples["rp_collect"].append(await atimed(
            lambda: rp_collect(pool, items, Inc, expected)))
        samples["rp_warm"].append(await atimed(lambda: rp_map(pool, items, Inc, expected)))
        samples["pool_map"].append(await in_thread(
            lambda: check(mp.map(inc, items, chunksize=chunk), expected, "Pool.map")))
        samples["pool_imap"].append(await in_thread(
            lambda: check(list(mp.imap(inc, items)), expected, "Pool.imap")))
    cold = await atimed(lambda: rp_map(config, items, Inc, expected))
    context = multiprocessing.get_context("spawn")

    def pool_cold() -> None:
        with context.Pool(config.workers()) as fresh:
            check(fresh.map(inc, items), expected, "Pool start + map")

    m = medians(samples)
    pool_start_map = await in_thread(pool_cold)
    def paired(ours: str) -> float:
        return statistics.median(p / r for p, r in zip(samples["pool_map"], samples[ours],
                                                       strict=True))

    return {"pool_chunksize": chunk, **{f"{k}_s": v for k, v in m.items()},
            "collect_vs_pool_map": m["pool_map"] / m["rp_collect"],
            "collect_vs_pool_map_paired": paired("rp_collect"),
            "warm_vs_pool_map": m["pool_map"] / m["rp_warm"],
            "warm_vs_pool_map_paired": paired("rp_warm"),
            "warm_vs_pool_imap": m["pool_imap"] / m["rp_warm"],
            "rp_cold_s": cold, "pool_start_and_map_s": pool_start_map,
            "cold_vs_pool_start_and_map": pool_start_map / cold}


async def timed_spins(target: rp.map_reduce.Config | rp.map_reduce.MapPool,
                      items: list[int]) -> tuple[float, float]:
    """Wall seconds of mapping ``spin_timed`` over ``items``, and the seconds the items took
    (their sum: the work done, slowed as it may be by other processes)."""
    start = time.perf_counter()
    out = [y async for y in rp.map_reduce.map(target, items, SpinTimed, None)]
    return time.perf_counter() - start, sum(out)


async def cpu(config: rp.map_reduce.Config, pool: rp.map_reduce.MapPool,
              mp: multiprocessing.pool.Pool, n: int, rounds: int) -> dict[str, object]:
    """Wall ÷ ideal (ideal: n x 5 ms ÷ workers), and wall ÷ work (work: the items' own
    measured times ÷ workers): the part of the excess that is the library's, when other
    processes also slow the items down."""
    items = list(range(n))
    workers = config.workers()
    ideal = n * CPU_SECONDS / workers
    ratios: dict[str, list[float]] = {}
    spawns: list[float] = []

    def add(name: str, wall: float, work: float) -> None:
        ratios.setdefault(f"{name}_wall_over_ideal", []).append(wall / ideal)
        ratios.setdefault(f"{name}_wall_over_work", []).append(wall / (work / workers))

    def pool_map() -> tuple[float, float]:
        start = time.perf_counter()
        out = mp.map(spin_timed, items, chunksize=1)
        return time.perf_counter() - start, sum(out)

    for _ in range(rounds):
        add("rp_warm", *await timed_spins(pool, items))
        add("pool_map_chunk1", *await asyncio.to_thread(pool_map))
        add("rp_cold", *await timed_spins(config, items))
        start = time.perf_counter()
        async with config.open():  # what a cold map spends spawning (it maps meanwhile)
            spawns.append(time.perf_counter() - start)
    return {**medians(ratios), "spawn_s": statistics.median(spawns), "ideal_s": ideal}


async def find(config: rp.map_reduce.Config, pool: rp.map_reduce.MapPool,
               n: int) -> dict[str, object]:
    warm = cold = 0.0
    for target in (pool, config):
        start = time.perf_counter()
        hit = await rp.map_reduce.find_map(target, range(n), FindTenth, None)
        elapsed = time.perf_counter() - start
        if hit != 9:
            raise AssertionError(f"find_map returned {hit}")
        warm, cold = (elapsed, cold) if target is pool else (warm, elapsed)
    return {"warm_find_map_s": warm, "cold_find_map_s": cold}


async def rss(pool: rp.map_reduce.MapPool, n: int) -> dict[str, object]:
    def source() -> Iterator[int]:
        yield from range(n)

    before = peak = rss_bytes()
    count = 0
    async for y in rp.map_reduce.map(pool, source(), Inc, None):
        count += 1
        if count % 50_000 == 0:
            peak = max(peak, rss_bytes())
        if y != count:
            raise AssertionError("rss: wrong results")
    peak = max(peak, rss_bytes())
    return {"items": count, "rss_growth_mb": (peak - before) / 2**20}


async def main(arguments: argparse.Namespace) -> None:
    config = rp.map_reduce.Config(local=arguments.workers)
    workers = config.workers()
    scale = 10 if arguments.quick else 1
    print(f"workers: {workers}, rounds: {arguments.rounds}", flush=True)
    rows: dict[str, dict[str, object]] = {}
    with multiprocessing.get_context("spawn").Pool(workers) as mp:
        mp.map(inc, range(4 * workers))  # started and warm
        async with config.open() as pool:
            only = arguments.only
            if only in (None, "tiny"):
                rows["tiny (100k x+1)"] = await tiny(config, pool, mp, 100_000 // scale,
                                                     arguments.rounds)
            if only in (None, "cpu"):
                rows["cpu (2000 x 5 ms)"] = await cpu(config, pool, mp, 2000 // scale,
                                                      max(1, arguments.rounds // 3))
            if only in (None, "find"):
                rows["find_map (hit 10th of 1M)"] = await find(config, pool, 1_000_000)
            if only in (None, "rss"):
                rows["rss (1M through map)"] = await rss(pool, 1_000_000 // scale)
    for name, figures in rows.items():
        text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in figures.items())
        print(f"{name}: {text}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    parser.add_argument("--only", choices=("tiny", "cpu", "find", "rss"), default=None,
                        help="run one row only")
    rp.start_app(lambda: main(parser.parse_args()))
