"""The one command: ``python benchmarks/peers/run.py [--quick]`` (any working directory)."""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Import from the repository root, not from this folder (whose module names are generic).
    sys.path[0] = str(Path(__file__).resolve().parents[2])
    from benchmarks.peers.runner import main

    sys.exit(main())
