"""Ray: a local cluster bound to 127.0.0.1 (no dashboard, no usage stats) and actors."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any, ClassVar

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray resolves "127.0.0.1" to the machine's outward address unless it runs as a single-machine
# cluster; this switch (read at import) makes it keep loopback, and bind its servers there.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray

from .base import SpreadPeer, check, check_array, check_map
from .tasks import chunks, inc_many, spin


class _Actor:
    def inc(self, x: int) -> int:
        return x + 1

    def echo(self, data: bytes) -> bytes:
        return data

    def inc_many(self, xs: list[int]) -> list[int]:
        return inc_many(xs)

    def spin(self, x: int) -> int:
        return spin(x)


_RemoteActor: Any = ray.remote(_Actor)


class RayPeer(SpreadPeer):
    key = "ray"
    label = "Ray actor"
    has_cluster = True
    supports: ClassVar[frozenset[str]] = SpreadPeer.supports | {"cluster_start"}
    notes: ClassVar[dict[str, str]] = {
        "cluster_start": "ray.init(num_cpus=2), local, 127.0.0.1, no dashboard",
        "spawn": "actor creation + first method call; cluster already up",
        "map": "chunks of len / (4 x actors) items, one actor call each over 2 actors",
        "map_cpu": "one actor call per item, round robin over 2 actors",
        "arrays": "ray.put(array), then an actor method returning it; ray.get of the result",
    }

    def __init__(self) -> None:
        self.actors: list[Any] = []
        self.temp_dir: str | None = None

    def version(self) -> str | None:
        return str(ray.__version__)

    def start_cluster(self, workers: int) -> float:
        # A private session directory, removed at stop, instead of piling up in /tmp/ray.
        self.temp_dir = tempfile.mkdtemp(prefix="bench-ray-")
        t0 = time.perf_counter()
        ray.init(
            _temp_dir=self.temp_dir,
            num_cpus=max(2, workers),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
            configure_logging=False,
        )
        return time.perf_counter() - t0

    def stop_cluster(self) -> None:
        ray.shutdown()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def spawn_first(self) -> float:
        t0 = time.perf_counter()
        actor = _RemoteActor.remote()
        r = ray.get(actor.inc.remote(1))
        dt = time.perf_counter() - t0
        ray.kill(actor)
        check(r == 2, "inc(1)")
        return dt

    def setup(self, workers: int) -> None:
        self.actors = [_RemoteActor.remote() for _ in range(workers)]
        ray.get([a.inc.remote(0) for a in self.actors])

    def latency(self, n: int) -> list[float]:
        actor = self.actors[0]
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = ray.get(actor.inc.remote(i))
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    def spread(self, items: list[int]) -> list[int]:
        actors = self.actors
        k = len(actors)
        return list(ray.get([actors[j % k].inc.remote(x) for j, x in enumerate(items)]))

    def map(self, items: list[int]) -> float:
        actors = self.actors
        k = len(actors)
        t0 = time.perf_counter()
        parts = chunks(items, self.chunks_per_worker * k)
        results = ray.get([actors[j % k].inc_many.remote(c) for j, c in enumerate(parts)])
        out = [y for part in results for y in part]
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    def spread_spin(self, items: list[int]) -> list[int]:
        actors = self.actors
        k = len(actors)
        return list(ray.get([actors[j % k].spin.remote(x) for j, x in enumerate(items)]))

    def echo(self, payload: bytes) -> float:
        t0 = time.perf_counter()
        r = ray.get(self.actors[0].echo.remote(payload))
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    def array_echo(self, array: Any) -> float:
        t0 = time.perf_counter()
        r = ray.get(self.actors[0].echo.remote(ray.put(array)))
        dt = time.perf_counter() - t0
        check_array(array, r)
        return dt

    def teardown(self) -> None:
        for a in self.actors:
            ray.kill(a)
        self.actors = []


PEER = RayPeer
