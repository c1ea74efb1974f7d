"""examples/map_reduce_pi.py runs as a program (local workers) and prints a close estimate."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "map_reduce_pi.py"


def test_the_pi_example_runs_and_estimates_pi() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), "--chunks", "30", "--samples", "20000", "--workers", "2"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"pi ~ (\d\.\d+) .* from 600,000 points on 2 workers", result.stdout)
    assert match is not None, result.stdout
    assert abs(float(match.group(1)) - 3.14159) < 0.02
