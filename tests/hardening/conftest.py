"""Short heartbeats and the leftover-process check of the worker tests, shared as is.

The two fixtures live in ``tests/workers/conftest.py``; importing them here registers them for
this directory too, so a change to how the suite sets the application's settings is made in
one place.
"""

from __future__ import annotations

from ..workers.conftest import nothing_left_behind, short_heartbeats

__all__ = ["nothing_left_behind", "short_heartbeats"]


import shutil
import tempfile
from collections.abc import Iterator

import pytest

from ..workers.support import SHORT

SMALL_MESSAGES = SHORT.__class__(
    heartbeat_interval=SHORT.heartbeat_interval,
    heartbeat_timeout=SHORT.heartbeat_timeout,
    max_message_size=64 * 1024,
)
"""Short heartbeats and a 64 KiB message limit, so "a message over the limit" is cheap."""


@pytest.fixture
def small_messages() -> object:
    """The application's settings for this test: SMALL_MESSAGES (restored afterwards).

    Set the same way as ``short_heartbeats`` in tests/workers/conftest.py does (the only
    internal name these tests touch; both the old and the restructured module are tried).
    """
    try:
        from rpc_parallel._state import process  # type: ignore[import-not-found]
    except ImportError:
        from rpc_parallel.state import process

    state = process()
    saved = state.settings
    state.settings = SMALL_MESSAGES
    try:
        yield SMALL_MESSAGES
    finally:
        state.settings = saved


@pytest.fixture
def private_tmp(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A short private temp dir for this process and its workers (Unix socket paths are
    limited to 107 bytes), so the ``rpc_parallel-*`` count is not disturbed by others.

    Depends on ``tmp_path`` so that pytest's own base temp dir is made before the patch."""
    directory = tempfile.mkdtemp(prefix="rph-")
    monkeypatch.setenv("TMPDIR", directory)
    monkeypatch.setattr(tempfile, "tempdir", directory)
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
