"""loky: a fresh ProcessPoolExecutor to spawn, the reusable executor for the rest."""

from __future__ import annotations

import concurrent.futures
from typing import ClassVar

import loky

from ._executor import ExecutorPeer


class LokyPeer(ExecutorPeer):
    key = "loky"
    label = "loky"
    notes: ClassVar[dict[str, str]] = {
        "spawn": "loky.ProcessPoolExecutor(1) (loky starts fresh interpreters)",
        "map": "get_reusable_executor().map, chunksize len / (4 x workers)",
        "map_cpu": "get_reusable_executor().map, chunksize 1",
    }

    def version(self) -> str | None:
        return str(loky.__version__)

    def new_executor(self, workers: int) -> concurrent.futures.Executor:
        executor: concurrent.futures.Executor = loky.ProcessPoolExecutor(max_workers=workers)
        return executor

    def steady_executor(self, workers: int) -> concurrent.futures.Executor:
        executor: concurrent.futures.Executor = loky.get_reusable_executor(max_workers=workers)
        return executor


PEER = LokyPeer
