"""Library adapters, one module per library, each exporting ``PEER`` (see ``base``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    module: str  # relative to this package
    dist: str | None  # the distribution from the ``bench`` extra it needs, if any


#: Report order: the library under test, the floors, the standard library, then the others.
REGISTRY: tuple[Entry, ...] = (
    Entry("rpc_parallel", "rpc_parallel", "rpc_parallel_peer", None),
    Entry("floor_asyncio", "floor: asyncio+msgspec", "floor", None),
    Entry("floor_c", "floor: C socketpair", "c_floor", None),
    Entry("mp_pool", "multiprocessing.Pool", "mp_pool", None),
    Entry("process_pool", "concurrent.futures", "process_pool", None),
    Entry("loky", "loky", "loky_peer", "loky"),
    Entry("execnet", "execnet", "execnet_peer", "execnet"),
    Entry("ray", "Ray actor", "ray_peer", "ray"),
    Entry("dask_futures", "Dask futures", "dask_futures", "dask"),
    Entry("dask_actor", "Dask actor", "dask_actor", "dask"),
)

BY_KEY: dict[str, Entry] = {e.key: e for e in REGISTRY}
