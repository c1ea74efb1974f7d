"""A master run under ``salloc -N1 -n4 ... python master_steps.py``: three workers as steps
of the allocation, one call of every kind on each; prints one JSON line per worker."""

from __future__ import annotations

import asyncio
import json
import os

import rpc_parallel as rp
from tests.slurm.workers import Node, every_kind


async def main() -> None:
    handles = await asyncio.gather(*(Node.spawn(i, how=rp.Slurm()) for i in range(3)))
    try:
        for offset, handle in enumerate(handles):
            place = await handle.run(Node.where)
            results = await every_kind(handle)
            print(json.dumps({"offset": offset, "job": place.job_id, "step": place.step_id,
                              "allocation": os.environ["SLURM_JOB_ID"], "results": results}),
                  flush=True)
    finally:
        for handle in handles:
            await handle.close()


if __name__ == "__main__":
    rp.start_app(main)
