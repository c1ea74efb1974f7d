"""rp.map_reduce against multiprocessing and concurrent.futures, in one run (issue 10's rows).

    PYTHONPATH=src .venv/bin/python benchmarks/map_reduce.py [--workers N] [--quick]

Rows (each library through its natural fast path; times are wall seconds of the whole map, the
rp figures including the spawn of its workers, the others' pools started beforehand):

- tiny: 100k items ``x + 1`` — rp.map_reduce.map vs ``multiprocessing.Pool.map`` (its default
  chunking), ``Pool.imap`` (default chunksize 1) and ``ProcessPoolExecutor.map`` with a tuned
  chunksize (items / (4 * workers));
- cpu: 2,000 items of ~5 ms CPU each — wall vs the ideal: the same items' serial time in this
  process ÷ workers;
- find: find_map whose hit is the 10th of 1 million items — seconds to return;
- rss: 1 million items through map — the master's resident memory growth while consuming.

Ray and Dask rows are not here yet. The machine may be shared: read ratios, not absolutes.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import multiprocessing
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


class Inc(rp.MapFunction[None, int, int]):
    def map(self, x: int) -> int:
        return x + 1


class Spin(rp.MapFunction[None, int, int]):
    def map(self, x: int) -> int:
        return spin(x)


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


async def rp_map_seconds(config: rp.map_reduce.Config, items: list[int]) -> float:
    start = time.perf_counter()
    out = [y async for y in rp.map_reduce.map(config, items, Inc, None)]
    elapsed = time.perf_counter() - start
    assert out == [x + 1 for x in items]
    return elapsed


def tiny(config: rp.map_reduce.Config, workers: int, n: int) -> dict[str, float]:
    items = list(range(n))
    expected = [x + 1 for x in items]
    rp_s = asyncio.run(rp_map_seconds(config, items))
    start = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        assert pool.map(inc, items) == expected
        pool_cold = time.perf_counter() - start  # start included, like rp's figure
        pool.map(inc, range(workers * 4))  # started and warm
        pool_map = timed(lambda: pool.map(inc, items) == expected or _fail("Pool.map"))
        pool_imap = timed(lambda: list(pool.imap(inc, items)) == expected or _fail("imap"))
    chunk = max(1, n // (4 * workers))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as executor:
        list(executor.map(inc, range(workers * 4)))
        executor_s = timed(lambda: list(executor.map(inc, items, chunksize=chunk)) == expected
                           or _fail("executor"))
    return {"rp_map_s": rp_s, "pool_start_and_map_s": pool_cold,
            "vs_pool_start_and_map": pool_cold / rp_s, "pool_map_s": pool_map, "pool_imap_s": pool_imap,
            "executor_map_s": executor_s, "vs_pool_map": pool_map / rp_s,
            "vs_pool_imap": pool_imap / rp_s, "vs_executor": executor_s / rp_s}


def _fail(what: str) -> bool:
    raise AssertionError(f"{what}: wrong results")


async def cpu(config: rp.map_reduce.Config, workers: int, n: int) -> dict[str, float]:
    sample = 100
    serial = timed(lambda: [spin(x) for x in range(sample)]) * n / sample
    start = time.perf_counter()
    out = [y async for y in rp.map_reduce.map(config, range(n), Spin, None)]
    wall = time.perf_counter() - start
    assert out == list(range(n))
    ideal = serial / workers
    return {"wall_s": wall, "ideal_s": ideal, "wall_over_ideal": wall / ideal}


async def find(config: rp.map_reduce.Config, n: int) -> dict[str, float]:
    start = time.perf_counter()
    hit = await rp.map_reduce.find_map(config, range(n), FindTenth, None)
    elapsed = time.perf_counter() - start
    assert hit == 9
    return {"find_map_s": elapsed}


async def rss(config: rp.map_reduce.Config, n: int) -> dict[str, float]:
    def source() -> Iterator[int]:
        yield from range(n)

    before = peak = rss_bytes()
    count = 0
    async for y in rp.map_reduce.map(config, source(), Inc, None):
        count += 1
        if count % 50_000 == 0:
            peak = max(peak, rss_bytes())
        assert y == count
    peak = max(peak, rss_bytes())
    return {"items": count, "rss_growth_mb": (peak - before) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    arguments = parser.parse_args()
    config = rp.map_reduce.Config(local=arguments.workers)
    workers = config.workers()
    scale = 10 if arguments.quick else 1
    print(f"workers: {workers}")
    rows = {
        "tiny (100k x+1)": tiny(config, workers, 100_000 // scale),
        "cpu (2000 x 5 ms)": asyncio.run(cpu(config, workers, 2000 // scale)),
        "find_map (hit 10th of 1M)": asyncio.run(find(config, 1_000_000)),
        "rss (1M through map)": asyncio.run(rss(config, 1_000_000 // scale)),
    }
    for name, figures in rows.items():
        text = ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in figures.items())
        print(f"{name}: {text}")


if __name__ == "__main__":
    main()
