"""The worker class of benchmarks/slurm.py, in a module of its own.

A worker process imports its class's module. This one imports only what the worker needs,
as an application's module of worker classes would; the benchmark's own script imports
argparse, statistics, subprocess and pathlib for the harness, which no worker needs (8 ms of
CPU each, measured here, and 8 workers on 2 cores pay it four times over).
"""

from __future__ import annotations

import resource

import rpc_parallel as rp


class Probe(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x + 1

    @rp.rpc
    async def cpu_seconds(self) -> float:
        """CPU time this worker has used since its interpreter started."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
