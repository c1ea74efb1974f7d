"""Dask distributed actors, one per worker, on the same LocalCluster as the futures adapter."""

from __future__ import annotations

import time
from typing import Any, ClassVar

from .base import SpreadPeer, check, check_map
from .dask_futures import DaskPeer
from .tasks import chunks, inc_many, spin


class IncActor:
    def inc(self, x: int) -> int:
        return x + 1

    def echo(self, data: bytes) -> bytes:
        return data

    def inc_many(self, xs: list[int]) -> list[int]:
        return inc_many(xs)

    def spin(self, x: int) -> int:
        return spin(x)


class DaskActorPeer(SpreadPeer, DaskPeer):
    key = "dask_actor"
    label = "Dask actor"
    notes: ClassVar[dict[str, str]] = {
        "cluster_start": "LocalCluster(processes=True, threads_per_worker=1) + Client",
        "spawn": "actor creation + first method call; cluster already up",
        "map": "chunks of len / (4 x actors) items, one actor call each over 2 actors",
        "map_cpu": "one actor call per item, round robin over 2 actors",
    }

    def __init__(self) -> None:
        super().__init__()
        self.actors: list[Any] = []

    def spawn_first(self) -> float:
        client = self._client()
        t0 = time.perf_counter()
        actor: Any = client.submit(IncActor, actor=True, pure=False).result()
        r = actor.inc(1).result()
        dt = time.perf_counter() - t0
        check(r == 2, "inc(1)")
        del actor
        return dt

    def setup(self, workers: int) -> None:
        client = self._client()
        addresses = sorted(client.scheduler_info()["workers"])
        futures = [
            client.submit(IncActor, actor=True, pure=False, workers=[addresses[i % len(addresses)]])
            for i in range(workers)
        ]
        self.actors = [f.result() for f in futures]
        for a in self.actors:
            a.inc(0).result()

    def latency(self, n: int) -> list[float]:
        actor = self.actors[0]
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = actor.inc(i).result()
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    def spread(self, items: list[int]) -> list[int]:
        actors = self.actors
        k = len(actors)
        pending = [actors[j % k].inc(x) for j, x in enumerate(items)]
        return [p.result() for p in pending]

    def map(self, items: list[int]) -> float:
        actors = self.actors
        k = len(actors)
        t0 = time.perf_counter()
        parts = chunks(items, self.chunks_per_worker * k)
        pending = [actors[j % k].inc_many(c) for j, c in enumerate(parts)]
        out = [y for p in pending for y in p.result()]
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    def spread_spin(self, items: list[int]) -> list[int]:
        actors = self.actors
        k = len(actors)
        pending = [actors[j % k].spin(x) for j, x in enumerate(items)]
        return [p.result() for p in pending]

    def echo(self, payload: bytes) -> float:
        t0 = time.perf_counter()
        r = self.actors[0].echo(payload).result()
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    def teardown(self) -> None:
        self.actors = []


PEER = DaskActorPeer
