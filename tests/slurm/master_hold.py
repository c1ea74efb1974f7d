"""A master that spawns workers through ``rp.Slurm`` and then waits to be killed: prints
``READY <worker pids>`` once they run, and ``SUBMITTED`` after one more spawn that cannot
start yet has been sent to the queue (with ``--pending``)."""

from __future__ import annotations

import asyncio
import os
import sys

import rpc_parallel as rp
from tests.slurm.workers import Node


async def main() -> None:
    handles = await asyncio.gather(*(Node.spawn(i, how=rp.Slurm()) for i in range(2)))
    places = [await h.run(Node.where) for h in handles]
    print("READY", " ".join(str(p.pid) for p in places), flush=True)
    if "--pending" in sys.argv:
        inside = "SLURM_JOB_ID" in os.environ
        how = rp.Slurm(queue_timeout=8) if inside else rp.Slurm(cpus_per_task=8)
        pending = asyncio.ensure_future(Node.spawn(9, how=how))
        await asyncio.sleep(0)
        print("SUBMITTING", flush=True)
        await pending
    await asyncio.Event().wait()


if __name__ == "__main__":
    rp.start_app(main)
