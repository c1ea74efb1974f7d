"""Short heartbeats for every worker test, and no worker process left behind by any test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpc_parallel._state import process

from .support import SHORT, children, cmdline_bytes, wait_until_sync


def _leftovers() -> list[str]:
    """Children of this process that are zombies or still-running workers."""
    found = []
    for pid, state in children().items():
        if state == "Z":
            found.append(f"zombie {pid}")
            continue
        try:
            argv = cmdline_bytes(pid)
        except OSError:
            continue
        if b"rpc_parallel\0worker\0" in argv:
            words = argv.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"worker {pid}: {words}")
    return found


@pytest.fixture(autouse=True)
def short_heartbeats() -> Iterator[None]:
    state = process()
    saved = state.settings
    state.settings = SHORT
    try:
        yield
    finally:
        state.settings = saved


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    try:
        wait_until_sync(lambda: not _leftovers(), 10.0, "the test's workers to be gone")
    except AssertionError:
        raise AssertionError(f"left behind after the test: {_leftovers()}") from None
