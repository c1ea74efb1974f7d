"""Short heartbeats for the array tests, no worker left behind, and no shared-memory
segment left in /dev/shm once a test's connections have closed."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..workers.conftest import nothing_left_behind, short_heartbeats
from ..workers.support import wait_until_sync
from .support import not_foreign

__all__ = ["no_segment_left_behind", "nothing_left_behind", "short_heartbeats"]


def _segments() -> set[str]:
    """This process's segments and its workers' (not other programs' on the host)."""
    if not os.path.isdir("/dev/shm"):
        return set()
    return not_foreign()


@pytest.fixture(autouse=True)
def no_segment_left_behind() -> Iterator[None]:
    before = _segments()
    yield
    try:
        wait_until_sync(lambda: _segments() <= before, 10.0, "the test's segments to be gone")
    except AssertionError:
        raise AssertionError(f"left in /dev/shm: {sorted(_segments() - before)}") from None
