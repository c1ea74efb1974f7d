"""Helpers of the Slurm tests: the environment for a master subprocess, allocations made
with ``salloc --no-shell``, bounded waits on the queue."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.harness.slurm import SlurmCluster

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def master_env(cluster: SlurmCluster, **extra: str) -> dict[str, str]:
    """The environment of a master subprocess: the cluster, this checkout's sources."""
    env = {k: v for k, v in cluster.env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    env.update(extra)
    return env


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """``wait_for`` for async tests: the event loop keeps running (heartbeats) meanwhile."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.1)


def steps(cluster: SlurmCluster) -> list[str]:
    out = cluster.command(["squeue", "-h", "-s", "-o", "%i"], timeout=10).stdout.split()
    return [s for s in out if not s.endswith((".extern", ".batch", ".interactive"))]


def wait_queue_empty(cluster: SlurmCluster, timeout: float = 30.0) -> None:
    wait_for(lambda: not cluster.jobs(), timeout, f"an empty queue (left: {cluster.jobs()})")


@contextlib.contextmanager
def allocation(cluster: SlurmCluster, tasks: int) -> Iterator[str]:
    """An allocation of ``tasks`` CPUs (``salloc --no-shell``); this process is "inside"
    it (``SLURM_JOB_ID`` set) for the duration; cancelled after."""
    out = cluster.command(["salloc", "--no-shell", "-N1", f"-n{tasks}", "-t5"], timeout=60)
    match = re.search(r"Granted job allocation (\d+)", out.stderr + out.stdout)
    assert match is not None, out.stderr
    job_id = match[1]
    saved = {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_JOB_NODELIST")}
    os.environ.update(SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST="localhost")
    try:
        yield job_id
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cluster.command(["scancel", job_id], timeout=10, check=False)
        wait_queue_empty(cluster)


def tls_link(handle: Any) -> ssl.SSLObject:
    """The TLS object of a handle's link to its worker (it fails if the link is not TLS)."""
    link = handle._link
    assert link is not None
    ssl_object = link._transport.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject), "the worker's link is not TLS"
    return ssl_object


def python() -> str:
    return sys.executable
