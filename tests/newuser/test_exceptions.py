"""#11.6: exceptions by type — ``except KeyError:`` catches a remote KeyError (also an
``rp.RemoteError``, with the original's args and the remote traceback); a class the master
cannot import falls back to a plain ``RemoteError`` naming ``module.Class``. #11.4, #11.5:
exit codes and tracebacks are reported as they are, once, without internals."""

from __future__ import annotations

from pathlib import Path

import pytest

import rpc_parallel as rp

from ..workers.support import bounded
from .support import run_program, write_program
from .workers import Bank, InsufficientFunds


@pytest.mark.timeout(30)
async def test_except_builtin_exception_type_catches_the_remote_one() -> None:
    async with await Bank.spawn(10) as w:
        try:
            await w.run(Bank.lookup, "missing")
        except KeyError as error:
            assert isinstance(error, rp.RemoteError)
            assert error.args[:1] == ("missing",) or "missing" in str(error)
            assert "lookup" in error.remote_traceback
        else:
            pytest.fail("no exception")


@pytest.mark.timeout(30)
async def test_except_user_exception_type_catches_the_remote_one() -> None:
    async with await Bank.spawn(10) as w:
        with pytest.raises(InsufficientFunds) as caught:
            await w.run(Bank.withdraw, 50)
        error = caught.value
        assert isinstance(error, rp.RemoteError) and isinstance(error, rp.Error)
        assert error.args == (50, 10)
        assert error.needed == 50 and error.available == 10
        assert "raise InsufficientFunds" in error.remote_traceback  # type: ignore[attr-defined]
        assert await w.run(Bank.withdraw, 5) == 5  # the worker goes on


@pytest.mark.timeout(30)
async def test_unimportable_exception_class_falls_back_to_remote_error() -> None:
    async with await Bank.spawn(10) as w:
        with pytest.raises(rp.RemoteError) as caught:
            await w.run(Bank.local_error)
        assert caught.value.remote_type == "worker_only_module.OnlyInTheWorker"
        assert "cannot be rebuilt in the master" in str(caught.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", [3, 0])
async def test_sys_exit_code_is_reported_as_is(code: int) -> None:
    w = await Bank.spawn(10, redirect_stderr=rp.DevNull())
    try:
        with pytest.raises(rp.WorkerDied) as caught:
            await bounded(w.run(Bank.exit_with, code), 10.0, "the call that exits")
        error = caught.value
        assert error.exit_code == code, str(error)
        assert f"code {code}" in str(error)
        # Once, and no event-loop internals in what the user sees.
        assert "asyncio" not in error.stderr_tail and "base_events" not in error.stderr_tail, (
            error.stderr_tail)
        assert error.stderr_tail.count("Traceback") <= 1
    finally:
        await w.close()


UNCAUGHT_SPAWN_ERROR = """
import rpc_parallel as rp
from tests.newuser.workers import InitMethodRaises

async def main() -> None:
    await InitMethodRaises.spawn(None)

if __name__ == "__main__":
    rp.start_app(main)
"""


@pytest.mark.timeout(60)
async def test_spawn_error_shows_the_init_traceback_once(tmp_path: Path) -> None:
    """What the user sees when the SpawnError is not caught: the whole stderr of the program."""
    ran = await run_program(write_program(tmp_path, "prog.py", UNCAUGHT_SPAWN_ERROR))
    assert ran.returncode not in (0, None)
    assert "__init__ broke" in ran.err
    assert ran.err.count('raise ValueError("__init__ broke")') == 1, ran.err
