"""Count the primes below N with a segmented sieve, one segment per call, across workers.

    .venv/bin/python examples/primes.py [--limit N] [--workers W]

Each worker sieves ``[low, high)`` segments in ``sieve``, a plain ``def`` (so it runs in a
thread of the worker); the master keeps every worker busy with one segment at a time and
adds up the answers, then checks them against a sieve run in this process.
"""

import argparse
import asyncio
import math
import os
import time

import msgspec

import rpc_parallel as rp


class Segment(msgspec.Struct, frozen=True):
    count: int  # primes in [low, high)
    largest: int  # the largest of them, 0 if none


def small_primes(limit: int) -> list[int]:
    """The primes below ``limit`` (a plain sieve)."""
    sieve = bytearray([1]) * limit
    sieve[:2] = b"\x00\x00"[:limit]
    for p in range(2, math.isqrt(limit - 1) + 1 if limit > 1 else 0):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, limit, p)))
    return [i for i, flag in enumerate(sieve) if flag]


def sieve_segment(low: int, high: int) -> Segment:
    """Count the primes in ``[low, high)``."""
    low = max(low, 2)
    if high <= low:
        return Segment(0, 0)
    flags = bytearray([1]) * (high - low)
    for p in small_primes(math.isqrt(high - 1) + 1):
        start = max(p * p, (low + p - 1) // p * p)
        flags[start - low :: p] = bytes(len(range(start, high, p)))
    count = flags.count(1)
    largest = low + flags.rindex(1) if count else 0
    return Segment(count, largest)


class Sieve(rp.Worker[None]):
    @rp.rpc
    def sieve(self, low: int, high: int) -> Segment:
        """A plain def: runs in a thread of the worker."""
        return sieve_segment(low, high)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=500_000_000)
    parser.add_argument("--segment", type=int, default=5_000_000)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    options = parser.parse_args()
    segments = [(low, min(low + options.segment, options.limit))
                for low in range(0, options.limit, options.segment)]

    started = time.perf_counter()
    workers = await asyncio.gather(*(Sieve.spawn(None) for _ in range(options.workers)))
    results: list[Segment] = []
    todo = iter(segments)

    async def feed(worker: rp.WorkerHandle[Sieve]) -> None:
        for low, high in todo:
            results.append(await worker.run(Sieve.sieve, low, high))

    try:
        await asyncio.gather(*(feed(w) for w in workers))
    finally:
        await asyncio.gather(*(w.close() for w in workers))
    parallel_time = time.perf_counter() - started
    count = sum(r.count for r in results)
    largest = max(r.largest for r in results)
    print(f"{count} primes below {options.limit} (the largest: {largest}); "
          f"{len(workers)} workers took {parallel_time:.2f} s, spawning included")

    started = time.perf_counter()
    single = [sieve_segment(low, high) for low, high in segments]
    one_time = time.perf_counter() - started
    assert sum(r.count for r in single) == count and max(r.largest for r in single) == largest
    print(f"one process took {one_time:.2f} s and agrees; "
          f"speed-up {one_time / parallel_time:.2f}x")


if __name__ == "__main__":
    rp.start_app(main)
