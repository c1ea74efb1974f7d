"""Short heartbeats for every worker test (a stopped worker is noticed in 1.5 s)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpc_parallel.state import process

from .support import SHORT


@pytest.fixture(autouse=True)
def short_heartbeats() -> Iterator[None]:
    state = process()
    saved = state.settings
    state.settings = SHORT
    try:
        yield
    finally:
        state.settings = saved
