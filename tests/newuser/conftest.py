"""Short heartbeats and the leftover-process check of the worker tests, shared as is."""

from __future__ import annotations

from ..workers.conftest import nothing_left_behind, short_heartbeats

__all__ = ["nothing_left_behind", "short_heartbeats"]
