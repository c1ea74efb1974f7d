"""The worker tests' guards for the map/pool tests: short heartbeats, and no worker process
(nor zombie) left behind by any test."""

from __future__ import annotations

from ..workers.conftest import nothing_left_behind, short_heartbeats

__all__ = ["nothing_left_behind", "short_heartbeats"]
