"""``python -m benchmarks.peers``: the same as ``python benchmarks/peers/run.py``."""

from __future__ import annotations

import sys

from .runner import main

sys.exit(main())
