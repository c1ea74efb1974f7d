"""After every Slurm test: no child of this process left (no srun, no worker, no watchdog,
no zombie)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.workers.support import children, cmdline_bytes, wait_until_sync


def _leftovers() -> list[str]:
    found = []
    for pid, state in children().items():
        try:
            words = cmdline_bytes(pid).replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            words = ""
        if state == "Z" or "srun" in words or "rpc_parallel" in words or "salloc" in words:
            found.append(f"{pid} ({state}): {words[:200]}")
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind() -> Iterator[None]:
    yield
    try:
        wait_until_sync(lambda: not _leftovers(), 10.0, "the test's processes to be gone")
    except AssertionError:
        raise AssertionError(f"left behind after the test: {_leftovers()}") from None
