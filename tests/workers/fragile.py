"""A worker module that cannot be imported when ``RPC_PARALLEL_TEST_BREAK_IMPORT=1``."""

from __future__ import annotations

import os

import rpc_parallel as rp

if os.environ.get("RPC_PARALLEL_TEST_BREAK_IMPORT") == "1":
    raise ImportError("fragile: broken on purpose for the test")


class Fragile(rp.Worker[None]):
    @rp.rpc
    async def ping(self) -> str:
        return "pong"
