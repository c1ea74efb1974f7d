"""Library adapters, one module per library, each exporting ``PEER`` (see ``base``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    key: str
    label: str
    module: str  # relative to this package
    optional: bool  # an extra from the ``bench`` set, not the standard library


#: Report order: the library under test, the floors, the standard library, then the others.
REGISTRY: tuple[Entry, ...] = (
    Entry("rpc_parallel", "rpc_parallel", "rpc_parallel_peer", False),
    Entry("floor_asyncio", "floor: asyncio+msgspec", "floor", False),
    Entry("floor_c", "floor: C socketpair", "c_floor", False),
    Entry("mp_pool", "multiprocessing.Pool", "mp_pool", False),
    Entry("process_pool", "concurrent.futures", "process_pool", False),
    Entry("loky", "loky", "loky_peer", True),
    Entry("execnet", "execnet", "execnet_peer", True),
    Entry("ray", "Ray actor", "ray_peer", True),
    Entry("dask_futures", "Dask futures", "dask_futures", True),
    Entry("dask_actor", "Dask actor", "dask_actor", True),
)

BY_KEY: dict[str, Entry] = {e.key: e for e in REGISTRY}
