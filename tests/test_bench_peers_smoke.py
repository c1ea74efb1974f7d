"""The peer benchmark suite's smallest setting runs end to end and writes well-formed results.

Not a timing test: only the shape of the output is checked. It runs the standard-library peers,
the two floors and rpc_parallel in this interpreter (``--no-venv``); Ray, Dask, loky and execnet
are optional (the ``bench`` extra) and are left out, so they must show up as skipped.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "peers" / "run.py"
SELECTED = ["rpc_parallel", "floor_asyncio", "floor_c", "mp_pool", "process_pool"]
MUST_RUN = ["floor_asyncio", "mp_pool", "process_pool"]
OPTIONAL = ["loky", "execnet", "ray", "dask_futures", "dask_actor"]
WORKLOADS = ["spawn", "cluster_start", "latency", "inflight", "bandwidth", "arrays", "map",
             "map_cpu"]
STATUSES = {"ok", "n/a", "error", "absent"}


def _num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.timeout(90)
def test_quick_run_writes_well_formed_results(tmp_path: Path) -> None:
    pytest.importorskip("msgspec")
    done = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--quick",
            "--no-venv",
            "--peers",
            ",".join(SELECTED),
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        stdin=subprocess.DEVNULL,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    data = json.loads((tmp_path / "latest.json").read_text(encoding="utf-8"))
    assert data["schema_version"] == 1
    assert data["baseline"] == "rpc_parallel"
    assert data["setting"]["name"] == "quick"
    assert isinstance(data["ratio_definition"], str)
    assert _num(data["duration_s"])
    assert data["machine"]["cpu_count"]

    libs = {lib["key"]: lib for lib in data["libraries"]}
    assert set(SELECTED + OPTIONAL) <= set(libs)
    for key in OPTIONAL:
        assert libs[key]["status"] == "skipped", libs[key]
    for key in MUST_RUN:
        assert libs[key]["status"] == "ok", (libs[key], output)
    for lib in libs.values():
        assert lib["status"] in {"ok", "skipped", "unavailable", "failed", "timeout"}
        assert isinstance(lib["label"], str) and lib["label"]

    assert [w["key"] for w in data["workloads"]] == WORKLOADS
    for w in data["workloads"]:
        assert w["better"] in {"lower", "higher"} and w["unit"] and w["title"]

    results = data["results"]
    assert set(results) == set(WORKLOADS)
    for wkey, per_lib in results.items():
        assert set(per_lib) == set(libs), wkey
        base = per_lib["rpc_parallel"]
        for key, e in per_lib.items():
            assert e["status"] in STATUSES, (wkey, key, e)
            if key in OPTIONAL:
                assert e["status"] == "absent"
            if e["status"] != "ok":
                continue
            assert _num(e["median"]) and e["median"] > 0, (wkey, key, e)
            spread = e["spread"]
            assert spread["kind"] in {"p25-p75", "min-max"}
            assert spread["low"] <= e["median"] <= spread["high"], (wkey, key, e)
            assert isinstance(e["n"], int) and e["n"] >= 1
            if base["status"] == "ok":
                assert _num(e["ratio"]), (wkey, key, e)
                assert e["ratio"] == pytest.approx(e["median"] / base["median"])
            else:
                assert e["ratio"] is None

    # Every steady-state workload was measured for the standard-library pool.
    for wkey in ["spawn", "latency", "inflight", "bandwidth", "arrays", "map", "map_cpu"]:
        assert results[wkey]["mp_pool"]["status"] == "ok", results[wkey]["mp_pool"]
    # The map rows of rpc_parallel (rp.map_reduce over an open MapPool) were measured, and the
    # floors, which have no map, are marked not applicable.
    for wkey in ["map", "map_cpu"]:
        assert results[wkey]["rpc_parallel"]["status"] == "ok", results[wkey]["rpc_parallel"]
    assert results["map_cpu"]["floor_asyncio"]["status"] == "n/a"
    # CPU-bound items: wall / ideal cannot be below 1 (the work itself), and a run that
    # balanced them at all stays within a few times it even on a busy machine.
    for key in ["rpc_parallel", "mp_pool"]:
        assert 0.9 < results["map_cpu"][key]["median"] < 10, results["map_cpu"][key]
    assert results["cluster_start"]["mp_pool"]["status"] == "n/a"
    assert _num(results["latency"]["mp_pool"]["p99"])

    md = (tmp_path / "latest.md").read_text(encoding="utf-8")
    assert "| library |" in md and "multiprocessing.Pool" in md
    png = tmp_path / "latest.png"
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "latest.png" in md
    else:
        assert not png.exists()
        assert "no chart" in output
