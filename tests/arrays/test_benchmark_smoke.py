"""benchmarks/arrays.py and benchmarks/arrays_tcp.py in their quick forms: they run, check
the arrays that come back, and write well-formed results with their ratios (the figures
themselves are for a quiet machine, not for a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str, out: Path) -> tuple[dict[str, object], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--out", str(out)],
        cwd=out.parent, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


@pytest.mark.timeout(320)
def test_arrays_quick_measures_both_write_paths(tmp_path: Path) -> None:
    results, stdout = run_quick("arrays.py", tmp_path / "arrays.json")
    figures = results["figures"]
    assert isinstance(figures, dict)
    for name in ("rpc_parallel", "rpc_parallel mapped_writes", "multiprocessing.Pool"):
        assert figures[name]["gb_per_s"] > 0, name
    ratios = results["ratios"]
    assert isinstance(ratios, dict)
    assert ratios["master peak RSS / array size (target < 2.5)"] > 0
    assert "rate vs Ray object store (mapped_writes) (target >= 1)" in ratios
    assert "mapped_writes" in stdout


@pytest.mark.timeout(320)
def test_arrays_tcp_quick_measures_rpc_beside_the_socket(tmp_path: Path) -> None:
    results, stdout = run_quick("arrays_tcp.py", tmp_path / "arrays_tcp.json")
    figures = results["figures"]
    assert isinstance(figures, dict)
    assert set(figures) == {"rpc TCP", "socket TCP", "rpc TLS", "socket TLS"}
    for name, figure in figures.items():
        assert figure["gb_per_s"] > 0 and figure["client_cpu_s"] >= 0, name
    assert "TCP: rpc rate / socket rate" in stdout
