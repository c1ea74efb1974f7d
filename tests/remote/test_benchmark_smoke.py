"""benchmarks/remote.py in its quick, link-only form: it runs, measures every link and writes
well-formed results (the figures themselves are for a quiet machine, not for a test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..harness.netns import NamespaceHost

ROOT = Path(__file__).resolve().parents[2]
LINKS = {"TLS (ours)", "TLS (event loop's)", "plain TCP", "ssh -L forward",
         "remote worker link (TLS)"}


def test_quick_link_run_writes_every_link(tmp_path: Path,
                                          namespace_host: NamespaceHost) -> None:
    # (namespace_host: skipped, with the reason, where the machine cannot make one.)
    out = tmp_path / "remote.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "remote.py"), "--quick", "--link-only",
         "--out", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results["link"]) == LINKS
    for name, figures in results["link"].items():
        assert figures["latency_s"] > 0 and figures["bandwidth_bytes_per_s"] > 0, name
        assert figures["cpu_per_echo_s"] > 0, name
    assert results["spawn"] is None and results["execnet"] is None
    assert "TLS / TCP bandwidth" in results["ratios"]
    assert "TLS / TCP bandwidth" in done.stdout
