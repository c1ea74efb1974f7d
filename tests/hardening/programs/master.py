"""A master process for the tests that kill the master: ``master.py PHASE PID_FILE``.

It spawns workers, brings them to PHASE, prints one JSON line ``{"phase": ..., "pid": ...}``
when the phase is reached, and waits to be killed. Settings: short heartbeats (1.5 s), so
its workers notice its death fast. Run with the repository root on ``sys.path``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import rpc_parallel as rp
from tests.hardening.slow_import import SlowImport
from tests.hardening.workers import SlowInit
from tests.workers.workers import Echo

SETTINGS = rp.RpcSettings(heartbeat_interval=0.2, heartbeat_timeout=1.5)
QUIET = {"redirect_stdout": rp.DevNull(), "redirect_stderr": rp.DevNull()}


def report(phase: str, **extra: object) -> None:
    print(json.dumps({"phase": phase, "pid": os.getpid(), **extra}), flush=True)


async def forever() -> AsyncIterator[int]:
    while True:
        yield 1
        await asyncio.sleep(0.005)


async def in_flight(phase: str) -> list[asyncio.Future[object]]:
    w = await Echo.spawn(0, **QUIET)
    keep: list[asyncio.Future[object]] = []
    if phase == "rpc":
        keep.append(asyncio.ensure_future(w.run(Echo.sleep, 600.0)))
    elif phase == "pipe":
        reader = await w.run(Echo.endless)
        await anext(reader)
        keep.append(asyncio.ensure_future(reader.__anext__()))
        keep.append(asyncio.ensure_future(asyncio.sleep(0, reader)))
    elif phase == "reverse_pipe":
        keep.append(asyncio.ensure_future(w.run(Echo.swallow, forever())))
    elif phase == "nested":
        await w.run(Echo.spawn_and_keep, 0)
    await w.run(Echo.add, 0, 0)  # every call above has reached the worker
    return keep


async def written(path: str) -> None:
    """Until the worker has written its pid to ``path`` (polled: it is another process)."""
    while not os.path.exists(path) or os.path.getsize(path) == 0:  # noqa: ASYNC110, ASYNC240
        await asyncio.sleep(0.01)


async def main() -> None:
    phase, pid_file = sys.argv[1], sys.argv[2]
    if phase == "spawn":
        task = asyncio.ensure_future(SlowImport.spawn(
            None, env={"RPH_SLOW_IMPORT": pid_file}, connection_timeout=60, **QUIET))
        await written(pid_file)
        report(phase)
        await task
    elif phase == "init":
        task = asyncio.ensure_future(SlowInit.spawn(pid_file, connection_timeout=60, **QUIET))
        await written(pid_file)
        report(phase)
        await task
    elif phase == "close":
        workers = [await Echo.spawn(0, **QUIET) for _ in range(6)]
        report(phase)
        for w in workers:
            await w.close()
    else:
        keep = await in_flight(phase)
        report(phase)
        await asyncio.gather(*keep)
    await asyncio.Event().wait()


if __name__ == "__main__":
    rp.start_app(main, rpc_settings=SETTINGS)
