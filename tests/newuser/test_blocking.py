"""#11.11: a blocking API for scripts and notebooks (``rp.blocking.spawn``), a clear error for
``start_app`` inside a running loop, and for a handle used from another event loop.
#11.12: what a user sees names only public things."""

from __future__ import annotations

import gc
import warnings
from pathlib import Path

import pytest

import rpc_parallel as rp

from .support import run_program, write_program
from .workers import Bank


@pytest.mark.timeout(30)
def test_blocking_spawn_and_run() -> None:
    with rp.blocking.spawn(Bank, 10) as w:
        assert w.run(Bank.withdraw, 3) == 7
        reader_pid = w.run(Bank.pid)
        assert reader_pid == w.pid


IN_A_RUNNING_LOOP = """
import asyncio
import rpc_parallel as rp

async def main() -> None:
    pass

async def notebook_cell() -> None:  # what Jupyter does: a loop is already running
    try:
        rp.start_app(main)
    except rp.Error as error:
        print("rp.Error:", error)
    except Exception as error:
        print("other:", type(error).__name__, error)

asyncio.run(notebook_cell())
"""


@pytest.mark.timeout(60)
async def test_start_app_inside_a_running_loop_is_a_clear_error(tmp_path: Path) -> None:
    ran = await run_program(write_program(tmp_path, "cell.py", IN_A_RUNNING_LOOP))
    assert ran.returncode == 0, ran.err
    assert ran.out.startswith("rp.Error:"), ran.out
    assert "running" in ran.out and "loop" in ran.out


ANOTHER_LOOP = """
import asyncio
import rpc_parallel as rp
from tests.newuser.workers import Bank

async def make():
    return await Bank.spawn(1)

handle = asyncio.run(make())
try:
    asyncio.run(handle.run(Bank.withdraw, 1))
    print("no error")
except rp.Error as error:
    print("rp.Error:", error)
except Exception as error:
    print("other:", type(error).__name__, error)
"""


@pytest.mark.timeout(60)
async def test_handle_used_from_another_event_loop_is_a_clear_error(tmp_path: Path) -> None:
    ran = await run_program(write_program(tmp_path, "loops.py", ANOTHER_LOOP), timeout=30.0)
    assert not ran.timed_out
    assert ran.out.startswith("rp.Error:"), ran.out + ran.err
    assert "Event loop is closed" not in ran.out and "loop" in ran.out


@pytest.mark.timeout(30)
async def test_a_forgotten_await_names_only_public_things() -> None:
    async with await Bank.spawn(1) as w:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            w.run(Bank.withdraw, 1)  # type: ignore[unused-coroutine]  # the mistake
            gc.collect()
        messages = [str(item.message) for item in caught if "never awaited" in str(item.message)]
        assert messages, "no 'never awaited' warning"
        assert not any("'_" in message or "._" in message for message in messages), messages
