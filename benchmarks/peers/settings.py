"""Workloads, their units, and the two run sizes (full and quick)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

Better = Literal["lower", "higher"]


@dataclass(frozen=True)
class Workload:
    """One figure in the report."""

    key: str
    title: str
    unit: str
    better: Better
    description: str


WORKLOADS: tuple[Workload, ...] = (
    Workload(
        "spawn",
        "Spawn to first result",
        "ms",
        "lower",
        "Start one worker process and get the result of one tiny call from it (worker teardown "
        "not counted). For Ray and Dask the cluster is already up: its start is the next figure.",
    ),
    Workload(
        "cluster_start",
        "Cluster start (Ray, Dask)",
        "s",
        "lower",
        "ray.init / LocalCluster + Client on a fresh machine state, measured separately from "
        "the actor or first task.",
    ),
    Workload(
        "latency",
        "Sequential latency of a tiny call",
        "µs",
        "lower",
        "One call at a time of inc(x) = x + 1 on one worker, each waited for before the next; "
        "median and p99 of the per-call times.",
    ),
    Workload(
        "inflight",
        "Tiny calls, many in flight, 2 workers",
        "calls/s",
        "higher",
        "N calls of inc(x) issued at once, spread over 2 workers, then all awaited.",
    ),
    Workload(
        "bandwidth",
        "Bytes echo bandwidth",
        "GB/s",
        "higher",
        "One worker returns the bytes it is sent; GB/s = 2 x payload size / round-trip time "
        "(bytes moved both ways), 10^9 bytes per GB.",
    ),
    Workload(
        "arrays",
        "numpy array echo",
        "GB/s",
        "higher",
        "One worker returns the float64 array it is sent (256 MiB in the full setting); GB/s = "
        "2 x array size / round-trip time. Pool pickles it; Ray puts it in its object store "
        "(ray.put) and the actor returns it; rpc_parallel sends it as a declared "
        "NDArray[np.float64]. The master's peak RSS during a round, over its RSS before the "
        "array existed, is given as a multiple of the array size.",
    ),
    Workload(
        "map",
        "Map over many small items",
        "items/s",
        "higher",
        "inc over a list of ints through each library's fastest natural map on 2 running "
        "workers (batched: a chunksize, or chunks as calls or tasks), results in input order.",
    ),
    Workload(
        "map_cpu",
        "Map of CPU-bound items, 2 workers",
        "x ideal",
        "lower",
        "Items of 5 ms CPU each through the library's map on 2 running workers: wall time / "
        "ideal, ideal = items x 5 ms / 2 workers (1.0 is perfect balance, no overhead).",
    ),
)

WORKLOAD_KEYS: tuple[str, ...] = tuple(w.key for w in WORKLOADS)


@dataclass(frozen=True)
class Setting:
    """How much of each workload to run. Counts are targets; budgets cut them short."""

    name: str
    spawn_reps: int
    cluster_reps: int
    latency_calls: int
    inflight_calls: int
    inflight_reps: int
    echo_bytes: int
    echo_reps: int
    map_items: int
    map_reps: int
    cpu_items: int
    cpu_reps: int
    array_bytes: int
    array_reps: int
    workload_budget_s: float  # soft: repetitions stop once it is spent (at least one is kept)
    workload_limit_s: float  # hard: a workload still running then is abandoned
    run_limit_s: float  # the whole run, all libraries

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


FULL = Setting(
    name="full",
    spawn_reps=7,
    cluster_reps=3,
    latency_calls=5000,
    inflight_calls=20_000,
    inflight_reps=5,
    echo_bytes=16 * 1024 * 1024,
    echo_reps=10,
    map_items=100_000,
    map_reps=5,
    cpu_items=2000,
    cpu_reps=2,
    array_bytes=256 * 1024 * 1024,
    array_reps=5,
    workload_budget_s=15.0,
    workload_limit_s=60.0,
    run_limit_s=14 * 60.0,
)

QUICK = Setting(
    name="quick",
    spawn_reps=1,
    cluster_reps=1,
    latency_calls=50,
    inflight_calls=200,
    inflight_reps=2,
    echo_bytes=1024 * 1024,
    echo_reps=2,
    map_items=2000,
    map_reps=2,
    cpu_items=100,
    cpu_reps=1,
    array_bytes=8 * 1024 * 1024,
    array_reps=2,
    workload_budget_s=3.0,
    workload_limit_s=20.0,
    run_limit_s=5 * 60.0,
)

SETTINGS: dict[str, Setting] = {s.name: s for s in (FULL, QUICK)}
