"""multiprocessing.Pool: apply (latency), apply_async (in flight), map (default chunksize:
len / (4 x workers), its best of those tried), map with chunksize 1 for CPU-bound items."""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import time
from typing import Any, ClassVar

from .base import Peer, check, check_array, check_map
from .tasks import echo, inc, spin


class PoolPeer(Peer):
    key = "mp_pool"
    label = "multiprocessing.Pool"
    notes: ClassVar[dict[str, str]] = {
        "spawn": f"Pool(1), start method {multiprocessing.get_start_method()!r}",
        "map": "Pool.map with its default chunksize (len / (4 x workers): the best tried)",
        "map_cpu": "Pool.map with chunksize 1 (the best for costly items)",
        "arrays": "Pool.apply of an echo: the array pickled both ways",
    }

    def __init__(self) -> None:
        self.pool: multiprocessing.pool.Pool | None = None

    def _pool(self) -> multiprocessing.pool.Pool:
        if self.pool is None:
            raise RuntimeError("setup() was not called")
        return self.pool

    def spawn_first(self) -> float:
        t0 = time.perf_counter()
        pool = multiprocessing.Pool(1)
        r = pool.apply(inc, (1,))
        dt = time.perf_counter() - t0
        pool.terminate()
        pool.join()
        check(r == 2, "inc(1)")
        return dt

    def setup(self, workers: int) -> None:
        self.pool = multiprocessing.Pool(workers)

    def latency(self, n: int) -> list[float]:
        pool = self._pool()
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = pool.apply(inc, (i,))
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    def inflight(self, n: int) -> float:
        pool = self._pool()
        t0 = time.perf_counter()
        pending = [pool.apply_async(inc, (i,)) for i in range(n)]
        results = [p.get() for p in pending]
        dt = time.perf_counter() - t0
        check(results[-1] == n, "inc")
        return dt

    def echo(self, payload: bytes) -> float:
        pool = self._pool()
        t0 = time.perf_counter()
        r = pool.apply(echo, (payload,))
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    def map(self, items: list[int]) -> float:
        pool = self._pool()
        t0 = time.perf_counter()
        out = pool.map(inc, items)
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    def map_cpu(self, items: list[int]) -> float:
        pool = self._pool()
        t0 = time.perf_counter()
        out = pool.map(spin, items, chunksize=1)
        dt = time.perf_counter() - t0
        check_map(items, out, plus=0)
        return dt

    def array_echo(self, array: Any) -> float:
        pool = self._pool()
        t0 = time.perf_counter()
        r = pool.apply(echo, (array,))  # pickled both ways
        dt = time.perf_counter() - t0
        check_array(array, r)
        return dt

    def teardown(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


PEER = PoolPeer
