"""examples/slurm_squares.py runs as documented: under ``salloc``, and from outside."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.harness.slurm import SlurmCluster

from .support import ROOT, master_env, python, wait_queue_empty


def _run(cluster: SlurmCluster, directory: Path, prefix: list[str], *args: str) -> str:
    result = subprocess.run(
        [*prefix, python(), str(ROOT / "examples/slurm_squares.py"), "--limit", "100000", *args],
        env=master_env(cluster, RPC_PARALLEL_SLURM_DIR=str(directory)), cwd=ROOT,
        capture_output=True, text=True, timeout=180,
    )
    assert list(directory.iterdir()) == []  # the master removed its private directory
    assert result.returncode == 0, result.stderr[-3000:]
    wait_queue_empty(cluster)
    return result.stdout


def test_example_under_salloc(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = _run(slurm_cluster, tmp_path, ["timeout", "150", "salloc", "-N1", "-n4", "-t5"])
    assert "inside allocation" in out and "4 workers as job steps" in out, out
    assert sum(line.startswith("  Squares-") for line in out.splitlines()) == 4, out
    assert f"sum of squares below 100000: {sum(i * i for i in range(100000))}" in out, out


def test_example_from_outside_an_allocation(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = _run(slurm_cluster, tmp_path, ["timeout", "150"], "--workers", "2")
    assert "2 workers as jobs of their own" in out, out
    assert sum(line.startswith("  Squares-") for line in out.splitlines()) == 2, out
    assert f"sum of squares below 100000: {sum(i * i for i in range(100000))}" in out, out


def test_map_reduce_from_slurm_and_a_pool_under_salloc(slurm_cluster: SlurmCluster) -> None:
    result = subprocess.run(
        ["timeout", "150", "salloc", "-N1", "-n4", "-t5", python(),
         str(ROOT / "tests/slurm/master_map.py")],
        env=master_env(slurm_cluster), cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["workers"] == 4  # one per task of `salloc -n4`
    assert out["squares"] == [x * x for x in range(200)]
    assert len(out["map_steps"]) >= 1 and all(s.isdigit() for s in out["map_steps"])
    assert len(out["pool_steps"]) == 4 and len(set(out["pool_steps"])) == 4
    assert out["pool_total"] == sum(x + 1 for x in range(10))
    wait_queue_empty(slurm_cluster)
