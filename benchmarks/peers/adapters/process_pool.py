"""concurrent.futures.ProcessPoolExecutor."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from typing import ClassVar

from ._executor import ExecutorPeer


class ProcessPoolPeer(ExecutorPeer):
    key = "process_pool"
    label = "concurrent.futures"
    notes: ClassVar[dict[str, str]] = {
        "spawn": f"ProcessPoolExecutor(1), start method {multiprocessing.get_start_method()!r}",
        "map": "Executor.map, chunksize len / (4 x workers)",
        "map_cpu": "Executor.map, chunksize 1",
    }

    def new_executor(self, workers: int) -> concurrent.futures.Executor:
        return concurrent.futures.ProcessPoolExecutor(max_workers=workers)


PEER = ProcessPoolPeer
