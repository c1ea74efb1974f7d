"""The function set every library adapter implements.

Each adapter module defines ``PEER``: a subclass of :class:`Peer` (blocking libraries) or of
:class:`AsyncPeer` (asyncio libraries) with the same methods. Every method that measures returns
its own timing in seconds, taken with ``time.perf_counter`` around exactly the work measured, so
the harness's own overhead (threads, event-loop hops) never enters a figure.

The tiny call is ``inc(x) = x + 1`` (an int in, an int out); the echo returns its bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from ..settings import WORKLOAD_KEYS

STEADY = frozenset({"latency", "inflight", "bandwidth", "map", "map_cpu", "arrays"})


class Unsupported(Exception):
    """A workload that has no meaning for this library (reported as "n/a", not as a failure)."""


class _Common:
    key: ClassVar[str]
    label: ClassVar[str]
    #: Ray and Dask: workers live in a cluster whose start is measured on its own.
    has_cluster: ClassVar[bool] = False
    #: Workloads this adapter runs; the others are reported as not applicable.
    supports: ClassVar[frozenset[str]] = frozenset(WORKLOAD_KEYS) - {"cluster_start"}
    #: How many chunks per worker the batched ``map`` cuts its items into (a quarter each,
    #: multiprocessing.Pool.map's default, which was its best of those tried).
    chunks_per_worker: ClassVar[int] = 4
    #: Per-workload notes shown next to the figures (how the library was driven).
    notes: ClassVar[dict[str, str]] = {}

    def version(self) -> str | None:
        """The library's version string, if it has one."""
        return None


class Peer(_Common):
    """A library driven through blocking calls."""

    def start_cluster(self, workers: int) -> float:
        """Start the cluster with ``workers`` worker processes; seconds taken."""
        raise Unsupported("no cluster")

    def stop_cluster(self) -> None:
        """Stop what :meth:`start_cluster` started."""

    def spawn_first(self) -> float:
        """Start one worker, run one tiny call; seconds to its result. Tears the worker down."""
        raise Unsupported("spawn")

    def setup(self, workers: int) -> None:
        """Start ``workers`` workers kept for the steady-state workloads (not timed)."""

    def latency(self, n: int) -> list[float]:
        """``n`` tiny calls one after the other on one worker; seconds of each."""
        raise Unsupported("latency")

    def inflight(self, n: int) -> float:
        """``n`` tiny calls issued at once over the workers, then all awaited; seconds."""
        raise Unsupported("inflight")

    def echo(self, payload: bytes) -> float:
        """Send ``payload`` to one worker and get it back; seconds for the round trip."""
        raise Unsupported("bandwidth")

    def map(self, items: list[int]) -> float:
        """Map inc over ``items`` (results checked, in order); seconds."""
        raise Unsupported("map")

    def map_cpu(self, items: list[int]) -> float:
        """Map ``tasks.spin`` over ``items`` (results checked, in order); seconds."""
        raise Unsupported("map_cpu")

    def array_echo(self, array: Any) -> float:
        """Send a numpy array to one worker and get it back (checked); seconds."""
        raise Unsupported("arrays")

    def teardown(self) -> None:
        """Stop the workers started by :meth:`setup`."""


class SpreadPeer(Peer):
    """A library whose many-calls workloads (in flight, map) are one call per item spread
    over its workers: the adapter gives ``spread``, this times and checks both."""

    def spread(self, items: list[int]) -> list[int]:
        """inc of every item, one call each over the workers, in input order."""
        raise NotImplementedError

    def inflight(self, n: int) -> float:
        t0 = time.perf_counter()
        results = self.spread(list(range(n)))
        dt = time.perf_counter() - t0
        check(results[-1] == n, "inc")
        return dt

    def map(self, items: list[int]) -> float:
        t0 = time.perf_counter()
        out = self.spread(items)
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    def spread_spin(self, items: list[int]) -> list[int]:
        """``tasks.spin`` of every item, one call each over the workers, in input order."""
        raise Unsupported("map_cpu")

    def map_cpu(self, items: list[int]) -> float:
        t0 = time.perf_counter()
        out = self.spread_spin(items)
        dt = time.perf_counter() - t0
        check_map(items, out, plus=0)
        return dt


class AsyncPeer(_Common):
    """A library driven from asyncio: the same methods, as coroutines."""

    @staticmethod
    def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``main`` to completion on this library's event loop, in the main thread."""
        asyncio.run(main())

    async def start_cluster(self, workers: int) -> float:
        raise Unsupported("no cluster")

    async def stop_cluster(self) -> None:
        return None

    async def spawn_first(self) -> float:
        raise Unsupported("spawn")

    async def setup(self, workers: int) -> None:
        return None

    async def latency(self, n: int) -> list[float]:
        raise Unsupported("latency")

    async def inflight(self, n: int) -> float:
        raise Unsupported("inflight")

    async def echo(self, payload: bytes) -> float:
        raise Unsupported("bandwidth")

    async def map(self, items: list[int]) -> float:
        raise Unsupported("map")

    async def map_cpu(self, items: list[int]) -> float:
        raise Unsupported("map_cpu")

    async def array_echo(self, array: Any) -> float:
        raise Unsupported("arrays")

    async def teardown(self) -> None:
        return None


def check(condition: bool, what: str) -> None:
    """Fail the workload loudly if a library returned a wrong result."""
    if not condition:
        raise RuntimeError(f"wrong result: {what}")


def check_array(sent: Any, received: Any) -> None:
    """The echoed array equals the one sent (dtype, shape, first and last values)."""
    check(received.dtype == sent.dtype and received.shape == sent.shape, "array dtype/shape")
    check(bool(received[0] == sent[0]) and bool(received[-1] == sent[-1]), "array values")


def check_map(items: list[int], out: list[int], plus: int = 1) -> None:
    check(len(out) == len(items), f"map returned {len(out)} items for {len(items)}")
    if items:
        check(out[0] == items[0] + plus and out[-1] == items[-1] + plus,
              "map results out of order")
