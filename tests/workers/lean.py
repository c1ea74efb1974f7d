"""A worker class in a module that imports nothing but ``rpc_parallel`` and ``sys``: what its
worker process imports is the library's doing alone (tests/workers/test_worker_imports.py)."""

from __future__ import annotations

import gc
import sys

import rpc_parallel as rp


class Lean(rp.Worker[int]):
    @rp.rpc
    async def modules(self) -> list[str]:
        """The modules this worker process has imported so far."""
        return sorted(sys.modules)

    @rp.rpc
    async def collector(self) -> tuple[bool, int]:
        """Whether the garbage collector is on, and how many objects it keeps frozen."""
        return gc.isenabled(), gc.get_freeze_count()

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + 1

    @rp.rpc
    async def offset(self) -> int | None:
        """What ``init_worker_state`` kept (None: the base's, which keeps nothing)."""
        return getattr(self, "kept", None)

    @rp.rpc
    async def child_add(self, x: int) -> int:
        """Spawn a worker from this one (the spawn pipeline, imported on first use) and
        ask it."""
        async with await Lean.spawn(0, name="lean-child") as child:
            return await child.run(Lean.add, x)


class LeanWithInit(Lean):
    def init_worker_state(self, init_arg: int, /) -> None:
        self.kept = init_arg
