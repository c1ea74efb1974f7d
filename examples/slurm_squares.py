"""Sum of squares across workers placed by Slurm: one worker per task of the allocation.

Inside an allocation, each worker is a job step:

    salloc -N2 -n8 -t 10 python examples/slurm_squares.py [--limit N]

or in a batch script (``#SBATCH -n 8`` ... ``python examples/slurm_squares.py``). Outside
one (on a login node), each worker is a job of its own in the default partition
(``--workers`` of them, default 2). Prints where each worker ran and the total, checked
against the same sum computed here.
"""

import argparse
import asyncio

import rpc_parallel as rp
from rpc_parallel.launch.slurm import slurm_allocation


class Squares(rp.Worker[None]):
    @rp.rpc
    def total(self, low: int, high: int) -> int:
        """The sum of i * i for i in [low, high) (a plain def: it runs in a worker thread)."""
        return sum(i * i for i in range(low, high))

    @rp.rpc
    async def node(self) -> str:
        import socket

        return socket.gethostname()


async def main(limit: int, workers: int) -> None:
    allocation = slurm_allocation()
    if allocation is not None:
        workers = allocation.workers()  # one per task: `salloc -n 8` gives 8
        print(f"inside allocation {allocation.job_id} on {', '.join(allocation.nodes)}: "
              f"{workers} workers as job steps")
    else:
        print(f"outside an allocation: {workers} workers as jobs of their own")
    how = rp.Slurm(time="10", queue_timeout=300)
    handles = await asyncio.gather(*(Squares.spawn(None, how=how) for _ in range(workers)))
    try:
        bounds = [(limit * k // workers, limit * (k + 1) // workers) for k in range(workers)]
        parts = await asyncio.gather(*(
            h.run(Squares.total, low, high) for h, (low, high) in zip(handles, bounds, strict=True)
        ))
        for handle, part in zip(handles, parts, strict=True):
            print(f"  {handle.name} on {await handle.run(Squares.node)}: {part}")
    finally:
        await asyncio.gather(*(h.close() for h in handles))
    total = sum(parts)
    assert total == sum(i * i for i in range(limit)), "the workers' sum is wrong"
    print(f"sum of squares below {limit}: {total}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2, help="outside an allocation")
    args = parser.parse_args()
    rp.start_app(lambda: main(args.limit, args.workers))
