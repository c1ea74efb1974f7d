"""Short heartbeats and no worker left behind (as for tests/workers), and no process this
test process started on another "host" left either: remote workers are not our children,
so they are found by the ``child-of <our pid>@`` words of their command line (the loopback
sshd and the namespace host share this machine's process table)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ..workers.conftest import nothing_left_behind, short_heartbeats
from ..workers.support import alive, all_pids, cmdline_bytes, wait_until_sync

__all__ = ["nothing_left_behind", "nothing_left_remotely", "short_heartbeats"]


def remote_leftovers() -> list[str]:
    """Live processes started for this test process: remote workers, ssh clients."""
    markers = (f"child-of\0{os.getpid()}@".encode(), f"child-of {os.getpid()}@".encode())
    found = []
    for pid in all_pids():
        try:
            argv = cmdline_bytes(pid)
        except OSError:
            continue
        if any(marker in argv for marker in markers) and alive(pid):
            words = argv.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"{pid}: {words[:200]}")
    return found


@pytest.fixture(autouse=True)
def nothing_left_remotely() -> Iterator[None]:
    yield
    try:
        wait_until_sync(lambda: not remote_leftovers(), 15.0, "remote workers to be gone")
    except AssertionError:
        raise AssertionError(f"left behind after the test: {remote_leftovers()}") from None
