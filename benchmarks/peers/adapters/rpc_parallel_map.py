"""rpc_parallel's map (DESIGN.md §6), in its own module so that only the map workload depends
on ``rp.map_reduce``; the map function class is at top level so workers can import it."""

from __future__ import annotations

import rpc_parallel as rp


class IncMap(rp.MapFunction[None, int, int]):
    async def map(self, x: int) -> int:
        return x + 1


async def run_map(items: list[int], workers: int) -> list[int]:
    config = rp.map_reduce.Config(local=workers)
    return [y async for y in rp.map_reduce.map(config, items, IncMap, None)]
