"""A master killed with a large array in flight: ``master_crash.py``, run with the repository
root on sys.path. It spawns a worker, blocks the worker's event loop, sends it an array
through shared memory, prints one JSON line ``{"worker": pid}`` and waits to be killed."""

from __future__ import annotations

import asyncio
import json

import numpy as np

import rpc_parallel as rp
from tests.arrays.workers import Arrays

SETTINGS = rp.RpcSettings(heartbeat_interval=0.2, heartbeat_timeout=1.5)


async def main() -> None:
    w = await Arrays.spawn(None, redirect_stdout=rp.DevNull(), redirect_stderr=rp.DevNull())
    pid = await w.run(Arrays.pid)
    stalled = asyncio.ensure_future(w.run(Arrays.stall, 1.0))
    held = asyncio.ensure_future(w.run(Arrays.hold, np.ones(2**20)))  # 8 MiB, in a segment
    await asyncio.sleep(0)  # the frames are written
    print(json.dumps({"worker": pid}), flush=True)
    await asyncio.gather(stalled, held)


if __name__ == "__main__":
    rp.start_app(main, rpc_settings=SETTINGS)
