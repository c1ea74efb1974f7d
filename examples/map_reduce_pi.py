"""Estimate pi by Monte Carlo over worker processes with ``rp.map_reduce``.

    .venv/bin/python examples/map_reduce_pi.py [--chunks N] [--samples S] [--workers W]
    .venv/bin/python examples/map_reduce_pi.py --host node1:8 --host node2:8   # over ssh

Each input is a chunk number; the worker draws ``samples`` points in the unit square from a
``random.Random`` seeded with the chunk number and counts those inside the quarter circle, so
the result does not depend on which worker did what. ``map_reduce_commutative`` adds the
counts; the same program runs on ssh hosts with nothing changed but its ``Config`` (the hosts
must share this directory, e.g. a cluster filesystem).
"""

from __future__ import annotations

import argparse
import math
import random
import time

import msgspec

import rpc_parallel as rp


class Job(msgspec.Struct, frozen=True):
    samples: int  # points per chunk


class Count(msgspec.Struct, frozen=True):
    inside: int
    total: int


class QuarterCircle(rp.MapReduceFunction[Job, int, Count]):
    def init(self, param: Job) -> None:
        self.samples = param.samples

    def map(self, x: int) -> Count:  # plain def: runs in a thread of the worker
        rng = random.Random(x)
        draw = rng.random
        inside = sum(1 for _ in range(self.samples) if draw() ** 2 + draw() ** 2 <= 1.0)
        return Count(inside, self.samples)

    def combine(self, a: Count, b: Count) -> Count:
        return Count(a.inside + b.inside, a.total + b.total)


def config_from(arguments: argparse.Namespace) -> rp.map_reduce.Config:
    if not arguments.host:
        return rp.map_reduce.Config(local=arguments.workers)
    remote = []
    for entry in arguments.host:
        host, _, count = entry.partition(":")
        remote.append((rp.Remote(host), int(count or 1)))
    return rp.map_reduce.Config(local=0, remote=remote)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=200)
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--workers", type=int, default=None, help="default: usable cores")
    parser.add_argument("--host", action="append", default=[], help="HOST[:N] over ssh")
    parser.add_argument("--progress", action="store_true")
    arguments = parser.parse_args()

    config = config_from(arguments)
    start = time.perf_counter()
    count = await rp.map_reduce.map_reduce_commutative(
        config, range(arguments.chunks), QuarterCircle, Job(arguments.samples),
        progress=arguments.progress,
    )
    elapsed = time.perf_counter() - start
    assert count is not None and count.total == arguments.chunks * arguments.samples
    estimate = 4 * count.inside / count.total
    print(f"pi ~ {estimate:.6f} (error {abs(estimate - math.pi):.2e}) from {count.total:,} "
          f"points on {config.workers()} workers in {elapsed:.2f} s")

    # The same chunks, checked in this process for a few of them.
    local = QuarterCircle()
    local.init(Job(arguments.samples))
    first = [local.map(i) for i in range(3)]
    assert sum(c.inside for c in first) <= count.inside


if __name__ == "__main__":
    rp.start_app(main)
