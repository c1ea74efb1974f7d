"""A master run under ``salloc -n4 ... python master_map.py``: ``map_reduce`` with a config
sized by ``Config.from_slurm()`` (one worker per task, as ``rp.Slurm`` steps), and a
``WorkerPool`` of ``rp.Slurm`` workers sized by ``slurm_allocation()``; prints JSON."""

from __future__ import annotations

import json

import rpc_parallel as rp
from rpc_parallel.launch.slurm import slurm_allocation
from tests.slurm.workers import Node


class Square(rp.MapFunction[None, int, tuple[int, str]]):
    def map(self, x: int) -> tuple[int, str]:
        import os

        return x * x, os.environ.get("SLURM_STEP_ID", "")


async def main() -> None:
    config = rp.map_reduce.Config.from_slurm()
    outputs = [y async for y in rp.map_reduce.map(config, range(200), Square, None)]
    allocation = slurm_allocation()
    assert allocation is not None
    async with rp.WorkerPool(Node, 1, allocation.workers(), how=rp.Slurm()) as pool:
        places = [await handle.run(Node.where) for handle in pool.workers]
        total = sum([await pool.run(Node.add, x) for x in range(10)])
    print(json.dumps({
        "workers": config.workers(), "squares": [x for x, _ in outputs],
        "map_steps": sorted({step for _, step in outputs}),
        "pool_steps": sorted(p.step_id for p in places), "pool_total": total,
    }), flush=True)


if __name__ == "__main__":
    rp.start_app(main)
