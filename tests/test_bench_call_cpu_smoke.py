"""``benchmarks/call_cpu.py --quick`` runs end to end and writes well-formed figures.

Not a timing test: only the shape of the output is checked (and that the CPU times it
reads from ``/proc`` are there: positive, finite)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_quick_run_writes_cpu_per_call_for_each_contender(tmp_path: Path) -> None:
    target = tmp_path / "call_cpu.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "call_cpu.py"), "--quick",
         "--seconds", "0.05", "--json", str(target)],
        cwd=ROOT, capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(target.read_text())
    assert set(report["medians"]) == {"floor", "rpc", "worker"}
    for figures in report["medians"].values():
        for key in ("calls_per_s", "client_us", "server_us"):
            assert math.isfinite(figures[key]) and figures[key] > 0, (key, figures)
    for ratios in report["ratios"].values():
        assert 0 < ratios["cpu_floor_over_ours"] < 10
        assert 0 < ratios["throughput_ours_over_floor"] < 10
    assert "CPU per call, floor/ours" in done.stdout
