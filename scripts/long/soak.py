#!/usr/bin/env python3
"""Long run (not in CI): a soak of spawns, calls of every kind and kills.

For ``--minutes`` (default 10) it keeps ``--workers`` workers busy with random work — rpc,
plain-def rpc, pipe (read whole, or dropped after a few items with ``aclose``), state,
one-way, reverse pipe, submit, remote errors — spawns and closes workers, and now and then
kills one with SIGKILL or stops it with SIGSTOP (each call in flight on it must fail with
``rp.WorkerDied`` within the promised bound; the worker is replaced). Every ``--every``
seconds it prints the master's RSS, fds, threads, asyncio tasks, child processes and
``rpc_parallel-*`` temp entries. At the end it closes everything, waits for the counts to
settle, and prints the verdict: "flat" (exit 0) or "grew" (exit 1), comparing the end with the
first sample taken after a warm-up.

    python scripts/long/soak.py                 # 10 minutes
    python scripts/long/soak.py --minutes 0.5 --every 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "src"), str(REPO)]
# Workers (and the fuzzed server) import this same tree, not whatever is installed.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO),
                                            os.environ.get("PYTHONPATH", "")])

import rpc_parallel as rp  # noqa: E402
from tests.hardening.support import (  # noqa: E402
    descendants,
    fd_count,
    rss_bytes,
    temp_entries,
    thread_count,
    zombies_of,
)
from tests.workers.workers import Echo  # noqa: E402

SETTINGS = rp.RpcSettings(heartbeat_interval=0.25, heartbeat_timeout=2.0)
KILLED_BOUND = 10.0
STOPPED_BOUND = SETTINGS.heartbeat_timeout + 5.0
MiB = 2**20


@dataclass
class Counts:
    spawns: int = 0
    closes: int = 0
    calls: int = 0
    kills: int = 0
    stops: int = 0
    worker_died: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Sample:
    rss: int
    fds: int
    threads: int
    tasks: int
    children: int
    zombies: int
    temp: int

    @classmethod
    def take(cls) -> Sample:
        return cls(rss_bytes(), fd_count(), thread_count(), len(asyncio.all_tasks()),
                   len(descendants()), len(zombies_of()), len(temp_entries()))

    def line(self, elapsed: float, counts: Counts) -> str:
        return (f"{elapsed:7.1f} s  RSS {self.rss / MiB:6.1f} MiB  fds {self.fds:4}  threads "
                f"{self.threads:3}  tasks {self.tasks:4}  children {self.children:3}  zombies "
                f"{self.zombies}  temp {self.temp:3}  | spawns {counts.spawns} calls "
                f"{counts.calls} kills {counts.kills} stops {counts.stops}")


async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def some_work(w: rp.WorkerHandle[Echo], rng: random.Random, counts: Counts) -> None:
    """One random call of some kind, checked."""
    kind = rng.randrange(9)
    x = rng.randrange(1000)
    if kind == 0:
        assert await w.run(Echo.add, x, 1) == x + 1
    elif kind == 1:
        assert (await w.run(Echo.add_in_thread, x))[0] == x
    elif kind == 2:
        assert [i async for i in await w.run(Echo.count, 50)] == list(range(50))
    elif kind == 3:
        reader = await w.run(Echo.endless)
        for _ in range(rng.randrange(1, 20)):
            await anext(reader)
        await reader.aclose()
    elif kind == 4:
        _, updates = await w.run(Echo.counter, x)
        assert len([u async for u in updates]) == 3
    elif kind == 5:
        await w.run(Echo.remember, str(x))
        if len(await w.run(Echo.recall)) > 1000:  # keep the worker's memory bounded
            raise RuntimeError("recall grew beyond the soak's bound")
    elif kind == 6:
        assert await w.run(Echo.total, 2, numbers(100)) == 2 * sum(range(100))
    elif kind == 7:
        assert await w.submit(Echo.add, x, 2) == x + 2
    else:
        with contextlib.suppress(rp.RemoteError):
            await w.run(Echo.fail, "expected")
    counts.calls += 1


async def hit(w: rp.WorkerHandle[Echo], rng: random.Random, counts: Counts) -> None:
    """Kill or stop ``w`` with a call in flight; the call must fail within its bound."""
    call = asyncio.ensure_future(w.run(Echo.sleep, 60.0))
    await w.run(Echo.add, 0, 0)
    how = signal.SIGKILL if rng.random() < 0.6 else signal.SIGSTOP
    bound = KILLED_BOUND if how == signal.SIGKILL else STOPPED_BOUND
    os.kill(w.pid, how)
    counts.kills += how == signal.SIGKILL
    counts.stops += how == signal.SIGSTOP
    started = time.monotonic()
    try:
        await asyncio.wait_for(call, bound)
        counts.problems.append(f"a call on a worker hit by {how.name} succeeded")
    except rp.WorkerDied:
        counts.worker_died += 1
    except TimeoutError:
        counts.problems.append(f"a call on a worker hit by {how.name} hung > {bound:g} s")
    took = time.monotonic() - started
    if took > bound:
        counts.problems.append(f"{how.name}: WorkerDied after {took:.1f} s > {bound:g} s")
    await w.close()


async def worker_loop(slot: int, deadline: float, rng: random.Random, counts: Counts,
                      kill_rate: float) -> None:
    while time.monotonic() < deadline:
        w = await Echo.spawn(0, name=f"soak-{slot}-{counts.spawns}",
                             redirect_stdout=rp.DevNull(), redirect_stderr=rp.DevNull())
        counts.spawns += 1
        try:
            for _ in range(rng.randrange(20, 200)):
                if time.monotonic() >= deadline:
                    break
                if rng.random() < kill_rate:
                    await hit(w, rng, counts)
                    break
                await some_work(w, rng, counts)
        except Exception as error:
            where = traceback.extract_tb(error.__traceback__)[-1]
            counts.problems.append(f"{type(error).__name__}: {error} (line {where.lineno})")
        finally:
            await w.close()
            counts.closes += 1


async def settle(baseline: Sample, timeout: float) -> Sample:
    end = time.monotonic() + timeout
    while True:
        now = Sample.take()
        same = (now.fds, now.threads, now.tasks, now.children, now.zombies, now.temp) == (
            baseline.fds, baseline.threads, baseline.tasks, baseline.children,
            baseline.zombies, baseline.temp)
        if same or time.monotonic() > end:
            return now
        await asyncio.sleep(0.2)


async def soak(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    counts = Counts()
    # Warm-up: the master server, thread pools and a first cycle of every kind exist.
    await worker_loop(0, time.monotonic() + 3.0, rng, counts, 0.0)
    baseline = Sample.take()
    started = time.monotonic()
    print(baseline.line(0.0, counts), "(baseline)", flush=True)
    deadline = started + args.minutes * 60
    loops = [asyncio.ensure_future(worker_loop(i, deadline, random.Random(rng.random()), counts,
                                               args.kill_rate)) for i in range(args.workers)]
    samples = [baseline]
    while not all(loop.done() for loop in loops):
        await asyncio.wait(loops, timeout=args.every)
        samples.append(Sample.take())
        print(samples[-1].line(time.monotonic() - started, counts), flush=True)
    for loop in loops:
        if loop.exception() is not None:
            counts.problems.append(f"worker loop failed: {loop.exception()!r}")
    final = await settle(baseline, 20.0)
    print(final.line(time.monotonic() - started, counts), "(after closing everything)")
    grown = (final.rss - baseline.rss) / MiB
    flat = (final.fds, final.threads, final.tasks, final.children, final.zombies,
            final.temp) == (baseline.fds, baseline.threads, baseline.tasks, baseline.children,
                            baseline.zombies, baseline.temp) and grown < args.max_growth
    print(f"{counts.spawns} spawns, {counts.calls} calls, {counts.kills} SIGKILL, "
          f"{counts.stops} SIGSTOP, {counts.worker_died} WorkerDied; RSS "
          f"{baseline.rss / MiB:.1f} -> {final.rss / MiB:.1f} MiB")
    for problem in counts.problems[:20]:
        print("problem:", problem)
    ok = flat and not counts.problems
    print("verdict:", "flat" if flat else "grew", "" if ok else f"({len(counts.problems)} problems)")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--every", type=float, default=10.0, help="print interval (s)")
    parser.add_argument("--workers", type=int, default=4, help="workers busy at once")
    parser.add_argument("--kill-rate", type=float, default=0.01,
                        help="chance per call that the worker is killed or stopped instead")
    parser.add_argument("--max-growth", type=float, default=20.0, help="MiB of RSS growth allowed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true",
                        help="show the library's log of each death (one line per kill)")
    args = parser.parse_args()
    if not args.verbose:
        logging.getLogger("rpc_parallel").setLevel(logging.CRITICAL)
    tempfile.tempdir = tempfile.mkdtemp(prefix="rpc-soak-")  # our own temp count
    os.environ["TMPDIR"] = tempfile.tempdir
    result: list[int] = []

    async def run() -> None:
        result.append(await soak(args))

    rp.start_app(run, rpc_settings=SETTINGS)
    leftovers = os.listdir(tempfile.tempdir)
    if leftovers:
        print("left in the temp dir:", leftovers)
    shutil.rmtree(tempfile.tempdir, ignore_errors=True)  # counted: now leave nothing behind
    if leftovers:
        return 1
    return result[0] if result else 1


if __name__ == "__main__":
    sys.exit(main())
