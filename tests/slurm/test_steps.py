"""Workers as job steps of an allocation, on the real single-node cluster."""

from __future__ import annotations

import asyncio
import subprocess
import time

import pytest

import rpc_parallel as rp
from tests.harness.slurm import SlurmCluster

from .support import HERE, allocation, master_env, python, steps, wait_for, wait_queue_empty
from .workers import Node, every_kind, expected


async def test_workers_are_steps_and_serve_every_kind(slurm_cluster: SlurmCluster) -> None:
    with allocation(slurm_cluster, 4) as job_id:
        handles = await asyncio.gather(*(Node.spawn(i, how=rp.Slurm()) for i in range(3)))
        try:
            places = [await h.run(Node.where) for h in handles]
            assert {p.job_id for p in places} == {job_id}
            assert len({p.step_id for p in places}) == 3, places  # one step each
            assert sorted(steps(slurm_cluster)) == sorted(f"{job_id}.{p.step_id}" for p in places)
            for offset, handle in enumerate(handles):
                assert await every_kind(handle) == expected(offset)
        finally:
            for handle in handles:
                await handle.close()
        wait_for(lambda: not steps(slurm_cluster), 15, "the steps to end after close")
