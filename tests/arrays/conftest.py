"""Short heartbeats for the array tests, no worker left behind, and no shared-memory
segment left in /dev/shm once a test's connections have closed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..workers.conftest import nothing_left_behind, short_heartbeats
from ..workers.support import wait_until_sync

__all__ = ["no_segment_left_behind", "nothing_left_behind", "short_heartbeats"]


def _segments() -> set[str]:
    if not os.path.isdir("/dev/shm"):
        return set()
    return {name for name in os.listdir("/dev/shm") if name.startswith("rpcp-")}


@pytest.fixture(autouse=True)
def no_segment_left_behind() -> Iterator[None]:
    before = _segments()
    yield
    try:
        wait_until_sync(lambda: _segments() <= before, 10.0, "the test's segments to be gone")
    except AssertionError:
        raise AssertionError(f"left in /dev/shm: {sorted(_segments() - before)}") from None
