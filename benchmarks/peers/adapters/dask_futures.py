"""Dask distributed: LocalCluster(processes=True) on 127.0.0.1, driven with futures."""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any, ClassVar

import distributed

from .base import Peer, check, check_map
from .tasks import chunks, echo, inc, inc_many, spin

_LocalCluster: Any = distributed.LocalCluster
_Client: Any = distributed.Client


class DaskPeer(Peer):
    """Cluster handling shared by the futures and the actor adapters."""

    has_cluster = True
    supports: ClassVar[frozenset[str]] = Peer.supports | {"cluster_start"}

    def __init__(self) -> None:
        # Any: distributed ships no type information for these.
        self.cluster: Any = None
        self.client: Any = None
        self.workers = 2
        warnings.filterwarnings("ignore", module="distributed")

    def version(self) -> str | None:
        return str(getattr(distributed, "__version__", None))

    def start_cluster(self, workers: int) -> float:
        t0 = time.perf_counter()
        self.cluster = _LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            scheduler_kwargs={"dashboard": False},
            silence_logs=logging.ERROR,
        )
        self.client = _Client(self.cluster)
        return time.perf_counter() - t0

    def stop_cluster(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None

    def _client(self) -> Any:
        if self.client is None:
            raise RuntimeError("start_cluster() was not called")
        return self.client


class DaskFuturesPeer(DaskPeer):
    key = "dask_futures"
    label = "Dask futures"
    notes: ClassVar[dict[str, str]] = {
        "cluster_start": "LocalCluster(processes=True, threads_per_worker=1) + Client",
        "spawn": "first task on the fresh cluster (its workers start within cluster start)",
        "map": "client.map(inc_many, chunks of len / (4 x workers) items), then gather",
        "map_cpu": "client.map(spin, items), then gather",
    }

    def spawn_first(self) -> float:
        client = self._client()
        t0 = time.perf_counter()
        r = client.submit(inc, 1, pure=False).result()
        dt = time.perf_counter() - t0
        check(r == 2, "inc(1)")
        return dt

    def setup(self, workers: int) -> None:
        client = self._client()
        self.workers = workers
        client.gather(client.map(inc, range(4 * workers), pure=False))

    def latency(self, n: int) -> list[float]:
        client = self._client()
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = client.submit(inc, i, pure=False).result()
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    def inflight(self, n: int) -> float:
        client = self._client()
        t0 = time.perf_counter()
        results: list[int] = client.gather(client.map(inc, range(n), pure=False))
        dt = time.perf_counter() - t0
        check(results[-1] == n, "inc")
        return dt

    def echo(self, payload: bytes) -> float:
        client = self._client()
        t0 = time.perf_counter()
        r = client.submit(echo, payload, pure=False).result()
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    def map(self, items: list[int]) -> float:
        client = self._client()
        t0 = time.perf_counter()
        parts = chunks(items, self.chunks_per_worker * self.workers)
        results: list[list[int]] = client.gather(client.map(inc_many, parts, pure=False))
        out = [y for part in results for y in part]
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    def map_cpu(self, items: list[int]) -> float:
        client = self._client()
        t0 = time.perf_counter()
        out: list[int] = client.gather(client.map(spin, items, pure=False))
        dt = time.perf_counter() - t0
        check_map(items, out, plus=0)
        return dt


PEER = DaskFuturesPeer
