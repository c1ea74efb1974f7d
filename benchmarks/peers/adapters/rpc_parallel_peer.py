"""rpc_parallel through its public API only (DESIGN.md §1-3, §6).

Driven from ``rp.start_app`` (see ``run_loop``); the worker class lives at module top level so the
worker process can import it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

import rpc_parallel as rp

from .base import AsyncPeer, check, check_array, check_map
from .tasks import spin


class BenchWorker(rp.Worker[None]):
    @rp.rpc
    async def inc(self, x: int) -> int:
        return x + 1

    @rp.rpc
    async def echo(self, data: bytes) -> bytes:
        return data


class IncMap(rp.MapFunction[None, int, int]):
    def map(self, x: int) -> int:
        return x + 1


class SpinMap(rp.MapFunction[None, int, int]):
    def map(self, x: int) -> int:
        return spin(x)


class RpcParallelPeer(AsyncPeer):
    key = "rpc_parallel"
    label = "rpc_parallel"
    notes: ClassVar[dict[str, str]] = {
        "spawn": "await BenchWorker.spawn(None) + first run",
        "inflight": "asyncio.gather of submit() over 2 handles (a future per call, no task)",
        "map": "rp.map_reduce.map over an open MapPool of 2 workers (Config(local=2).open()), "
        "outputs taken as one list with collect(), as Pool.map returns them",
        "map_cpu": "rp.map_reduce.map over the open MapPool (batches sized by measured cost)",
        "arrays": "an rpc declared NDArray[np.float64] -> NDArray[np.float64] (shared memory "
        "between local processes)",
    }

    def __init__(self) -> None:
        self.handles: list[rp.WorkerHandle[BenchWorker]] = []
        self.pool: rp.map_reduce.MapPool | None = None
        self.array_worker: rp.WorkerHandle[Any] | None = None

    def version(self) -> str | None:
        return str(getattr(rp, "__version__", None) or "") or None

    async def spawn_first(self) -> float:
        t0 = time.perf_counter()
        w = await BenchWorker.spawn(None)
        r = await w.run(BenchWorker.inc, 1)
        dt = time.perf_counter() - t0
        await w.close()
        check(r == 2, "inc(1)")
        return dt

    async def setup(self, workers: int) -> None:
        self.handles = list(
            await asyncio.gather(*(BenchWorker.spawn(None) for _ in range(workers)))
        )
        await asyncio.gather(*(h.run(BenchWorker.inc, 0) for h in self.handles))
        self.pool = await rp.map_reduce.Config(local=workers).open().start()

    async def latency(self, n: int) -> list[float]:
        h = self.handles[0]
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = await h.run(BenchWorker.inc, i)
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    async def inflight(self, n: int) -> float:
        hs = self.handles
        k = len(hs)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(hs[i % k].submit(BenchWorker.inc, i) for i in range(n)))
        dt = time.perf_counter() - t0
        check(results[-1] == n, "inc")
        return dt

    async def echo(self, payload: bytes) -> float:
        h = self.handles[0]
        t0 = time.perf_counter()
        r = await h.run(BenchWorker.echo, payload)
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    def _pool(self) -> rp.map_reduce.MapPool:
        if self.pool is None:
            raise RuntimeError("setup() was not called")
        return self.pool

    async def map(self, items: list[int]) -> float:
        pool = self._pool()
        t0 = time.perf_counter()
        out = await rp.map_reduce.map(pool, items, IncMap, None).collect()
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    async def map_cpu(self, items: list[int]) -> float:
        pool = self._pool()
        t0 = time.perf_counter()
        out = await rp.map_reduce.map(pool, items, SpinMap, None).collect()
        dt = time.perf_counter() - t0
        check_map(items, out, plus=0)
        return dt

    async def array_echo(self, array: Any) -> float:
        from ._array_worker import ArrayWorker  # numpy stays optional for the other workloads

        if self.array_worker is None:
            self.array_worker = await ArrayWorker.spawn(None)
        t0 = time.perf_counter()
        r = await self.array_worker.run(ArrayWorker.echo, array)
        dt = time.perf_counter() - t0
        check_array(array, r)
        return dt

    async def teardown(self) -> None:
        if self.array_worker is not None:
            await self.array_worker.close()
            self.array_worker = None
        await asyncio.gather(*(h.close() for h in self.handles))
        self.handles = []
        if self.pool is not None:
            await self.pool.close()
            self.pool = None

    @staticmethod
    def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        rp.start_app(main)  # the recommended entry point


PEER = RpcParallelPeer
