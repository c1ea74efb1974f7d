"""After every Slurm test: no child of this process left (no srun, no worker, no watchdog,
no zombie). ``outside``: a master outside any allocation, whose workers are jobs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rpc_parallel.launch import _slurm_job
from tests.harness.slurm import SlurmCluster
from tests.workers.support import children, cmdline_bytes, wait_until_sync

from .support import wait_queue_empty


def _leftovers() -> list[str]:
    found = []
    for pid, state in children().items():
        try:
            words = cmdline_bytes(pid).replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            words = ""
        if state == "Z" or "srun" in words or "rpc_parallel" in words or "salloc" in words:
            found.append(f"{pid} ({state}): {words[:200]}")
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    try:
        wait_until_sync(lambda: not _leftovers(), 10.0, "the test's processes to be gone")
    except AssertionError:
        raise AssertionError(f"left behind after the test: {_leftovers()}") from None


@pytest.fixture
def outside(slurm_cluster: SlurmCluster, tmp_path: Path) -> Iterator[SlurmCluster]:
    """Not inside an allocation; the master's private job directory under ``tmp_path``;
    afterwards the queue is empty and the directory holds nothing."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("SLURM_JOB")}
    os.environ[_slurm_job.DIRECTORY_VARIABLE] = str(tmp_path)
    try:
        yield slurm_cluster
    finally:
        os.environ.update(saved)
        os.environ.pop(_slurm_job.DIRECTORY_VARIABLE, None)
        try:
            wait_queue_empty(slurm_cluster, 20)
            jobs = []
        except AssertionError:
            jobs = slurm_cluster.jobs()
            slurm_cluster.command(["scancel", *jobs], check=False)
            wait_queue_empty(slurm_cluster)
        _slurm_job.remove_private_directory()
        assert not jobs, f"jobs left in the queue: {jobs}"
        assert list(tmp_path.iterdir()) == []
