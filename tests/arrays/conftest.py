"""Short heartbeats for the array tests, no worker left behind, no segment left in /dev/shm."""

from __future__ import annotations

from ..workers.conftest import nothing_left_behind, short_heartbeats

__all__ = ["nothing_left_behind", "short_heartbeats"]
