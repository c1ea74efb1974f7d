"""A worker module whose import is slow when ``RPH_SLOW_IMPORT`` names a pid file: the worker
writes its pid there and sleeps, so a test can hit it in the "spawn" phase (its process is
running, the library's own start-up has begun, it has not registered)."""

from __future__ import annotations

import os
import time

import rpc_parallel as rp

if os.environ.get("RPH_SLOW_IMPORT"):
    with open(os.environ["RPH_SLOW_IMPORT"], "w") as _file:
        _file.write(str(os.getpid()))
    time.sleep(30)


class SlowImport(rp.Worker[None]):
    @rp.rpc
    async def ping(self) -> str:
        return "pong"
