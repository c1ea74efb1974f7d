"""Short heartbeats and no worker left behind, as for tests/workers."""

from ..workers.conftest import nothing_left_behind, short_heartbeats

__all__ = ["nothing_left_behind", "short_heartbeats"]
