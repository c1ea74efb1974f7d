"""Shared body of the two concurrent.futures-style executors (stdlib and loky)."""

from __future__ import annotations

import concurrent.futures
import time

from .base import Peer, check, check_map
from .tasks import echo, inc, spin


class ExecutorPeer(Peer):
    """submit().result() for latency, many submit() for in flight, Executor.map for map (with
    a chunksize of len / (4 x workers)) and map_cpu (chunksize 1)."""

    def __init__(self) -> None:
        self.executor: concurrent.futures.Executor | None = None
        self.workers = 1

    def new_executor(self, workers: int) -> concurrent.futures.Executor:
        raise NotImplementedError

    def steady_executor(self, workers: int) -> concurrent.futures.Executor:
        return self.new_executor(workers)

    def _ex(self) -> concurrent.futures.Executor:
        if self.executor is None:
            raise RuntimeError("setup() was not called")
        return self.executor

    def spawn_first(self) -> float:
        t0 = time.perf_counter()
        ex = self.new_executor(1)
        r = ex.submit(inc, 1).result()
        dt = time.perf_counter() - t0
        ex.shutdown(wait=True)
        check(r == 2, "inc(1)")
        return dt

    def setup(self, workers: int) -> None:
        self.executor = self.steady_executor(workers)
        self.workers = workers
        # Start every worker before anything is measured.
        list(self.executor.map(inc, range(4 * workers)))

    def latency(self, n: int) -> list[float]:
        ex = self._ex()
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = ex.submit(inc, i).result()
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    def inflight(self, n: int) -> float:
        ex = self._ex()
        t0 = time.perf_counter()
        futures = [ex.submit(inc, i) for i in range(n)]
        results = [f.result() for f in futures]
        dt = time.perf_counter() - t0
        check(results[-1] == n, "inc")
        return dt

    def echo(self, payload: bytes) -> float:
        ex = self._ex()
        t0 = time.perf_counter()
        r = ex.submit(echo, payload).result()
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    def map(self, items: list[int]) -> float:
        ex = self._ex()
        t0 = time.perf_counter()
        chunk = max(1, -(-len(items) // (self.chunks_per_worker * self.workers)))
        out = list(ex.map(inc, items, chunksize=chunk))
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    def map_cpu(self, items: list[int]) -> float:
        ex = self._ex()
        t0 = time.perf_counter()
        out = list(ex.map(spin, items))
        dt = time.perf_counter() - t0
        check_map(items, out, plus=0)
        return dt

    def teardown(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True)
            self.executor = None
