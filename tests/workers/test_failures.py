"""Deliverable 5: every row of the failure table, with real processes and real signals."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import rpc_parallel as rp

from .fragile import Fragile
from .support import (
    SHORT,
    alive,
    bounded,
    gone,
    group_members,
    no_zombies,
    pids_with_argument,
    process_state,
    wait_until,
)
from .workers import Echo, Failures, InitFails

REPO = Path(__file__).resolve().parents[2]


async def forever() -> AsyncIterator[int]:
    while True:
        yield 1
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------- calls that raise


async def test_remote_error_carries_type_message_traceback_and_worker_goes_on() -> None:
    failures = Failures()
    async with await Echo.spawn(0, on_failure=failures) as w:
        with pytest.raises(rp.RemoteError) as caught:
            await w.run(Echo.fail, "bad thing")
        error = caught.value
        assert error.function == "Echo.fail"
        assert error.remote_type == "ValueError"
        assert error.remote_message == "bad thing"
        assert "raise ValueError(message)" in error.remote_traceback
        assert "workers.py" in error.remote_traceback
        assert "ValueError" in str(error) and "bad thing" in str(error)
        assert isinstance(error, rp.Error)
        # The worker keeps serving, every kind.
        assert await w.run(Echo.add, 1, 1) == 2
        assert [x async for x in await w.run(Echo.count, 2)] == [0, 1]
        assert await w.run(Echo.pid) == w.pid
    assert failures.items == []


# ---------------------------------------------------------------------- background failures


async def test_one_way_exception_goes_to_on_failure_then_worker_exits(tmp_path: Path) -> None:
    failures = Failures()
    err_file = tmp_path / "stderr.txt"
    w = await Echo.spawn(0, on_failure=failures, redirect_stderr=rp.FileTruncate(err_file))
    try:
        await w.run(Echo.fail_one_way, "one-way broke")  # sent: no error here
        failure = await failures.first(10.0)
        assert isinstance(failure, rp.WorkerFailure)
        assert failure.remote_type == "RuntimeError"
        assert "one-way broke" in str(failure)
        assert "Echo.fail_one_way" in failure.message
        assert "raise RuntimeError(message)" in failure.remote_traceback
        await gone(w.pid, 10.0)
        # The traceback also went to the worker's stderr redirection.
        await wait_until(lambda: "one-way broke" in err_file.read_text(), 5.0, "stderr file")
        assert "RuntimeError" in err_file.read_text()
        with pytest.raises(rp.ConnectionClosed):
            await bounded(w.run(Echo.add, 1), 10.0, "a call after the worker exited")
    finally:
        await w.close()
    assert len(failures.items) == 1
    await no_zombies()


async def test_background_exception_goes_to_on_failure_then_worker_exits() -> None:
    received: list[rp.WorkerFailure] = []
    called = asyncio.Event()

    async def on_failure(failure: rp.WorkerFailure) -> None:  # an async callback works too
        received.append(failure)
        called.set()

    async with await Echo.spawn(0, on_failure=on_failure, redirect_stderr=rp.DevNull()) as w:
        await w.run(Echo.fail_in_background, "lost key")
        await bounded(called.wait(), 10.0, "on_failure")
        failure = received[0]
        assert failure.remote_type == "KeyError"
        assert "lost key" in str(failure)
        assert "boom" in failure.message
        assert "raise KeyError(message)" in failure.remote_traceback
        await gone(w.pid, 10.0)
    assert len(received) == 1
    await no_zombies()


# ---------------------------------------------------------------------- the worker dies


async def start_calls_in_flight(w: rp.WorkerHandle[Echo]) -> dict[str, asyncio.Future[Any]]:
    """Calls of several kinds, all still running on the worker when this returns."""
    reader = await w.run(Echo.endless)
    assert await anext(reader) == 0  # the pipe is streaming

    async def drain() -> object:
        async for _ in reader:
            pass
        return "ended"

    _, updates = await w.run(Echo.counter, 0)
    calls: dict[str, asyncio.Future[Any]] = {
        "Echo.sleep": asyncio.ensure_future(w.run(Echo.sleep, 60.0)),
        "Echo.spin": asyncio.ensure_future(w.run(Echo.spin, 60.0)),
        "Echo.endless": asyncio.ensure_future(drain()),
        "Echo.swallow": asyncio.ensure_future(w.run(Echo.swallow, forever())),
        "Echo.sleep/submit": asyncio.ensure_future(w.submit(Echo.sleep, 60.0)),
    }
    assert [u async for u in updates] == ["update 1", "update 2", "update 3"]
    # Let every call reach the worker (bounded by a call that is answered after them).
    assert await bounded(w.run(Echo.add, 0, 0), 10.0, "a call beside the others") == 0
    assert not any(call.done() for call in calls.values())
    return calls


async def check_all_died(
    calls: dict[str, asyncio.Future[Any]], started: float, **expected: object
) -> list[rp.WorkerDied]:
    _, pending = await asyncio.wait(calls.values(), timeout=10.0)
    assert not pending, f"calls still hanging 10 s after the death: {pending}"
    assert time.monotonic() - started < 10.0
    errors = []
    for function, call in calls.items():
        error = call.exception()
        assert isinstance(error, rp.WorkerDied), (function, error)
        assert error.function == function.split("/")[0]
        assert function.split("/")[0] in str(error)
        for attribute, value in expected.items():
            assert getattr(error, attribute) == value, (function, attribute, error)
        errors.append(error)
    return errors


async def test_sigkill_fails_every_call_in_flight_with_worker_died() -> None:
    failures = Failures()
    w = await Echo.spawn(0, on_failure=failures)
    try:
        await w.run(Echo.say, "last words before the kill")
        calls = await start_calls_in_flight(w)
        started = time.monotonic()
        os.kill(w.pid, signal.SIGKILL)
        errors = await check_all_died(calls, started, signal=signal.SIGKILL, exit_code=None)
        for error in errors:
            assert "err: last words before the kill" in error.stderr_tail
            assert "SIGKILL" in str(error)
        failure = await failures.first(10.0)
        assert failure.signal == signal.SIGKILL
        assert "err: last words before the kill" in failure.stderr_tail
        with pytest.raises(rp.WorkerDied):
            await bounded(w.run(Echo.add, 1), 10.0, "a call after the death")
    finally:
        await w.close()
    assert len(failures.items) == 1
    assert process_state(w.pid) is None  # reaped
    await no_zombies()


async def test_os_exit_fails_every_call_in_flight_with_worker_died() -> None:
    failures = Failures()
    w = await Echo.spawn(0, on_failure=failures)
    try:
        calls = await start_calls_in_flight(w)
        started = time.monotonic()
        calls["Echo.exit_now"] = asyncio.ensure_future(w.run(Echo.exit_now, 7))
        errors = await check_all_died(calls, started, exit_code=7, signal=None)
        for error in errors:
            assert "exiting with 7" in error.stderr_tail
            assert "code 7" in str(error)
        failure = await failures.first(10.0)
        assert failure.exit_code == 7
        assert "exiting with 7" in failure.stderr_tail
    finally:
        await w.close()
    assert process_state(w.pid) is None
    await no_zombies()


async def test_sigstop_is_detected_by_heartbeats_and_the_worker_killed() -> None:
    failures = Failures()
    w = await Echo.spawn(0, on_failure=failures)
    try:
        call = asyncio.ensure_future(w.run(Echo.sleep, 60.0))
        reader = await w.run(Echo.endless)
        assert await anext(reader) == 0
        os.kill(w.pid, signal.SIGSTOP)
        await wait_until(lambda: process_state(w.pid) == "T", 5.0, "the worker to stop")
        started = time.monotonic()
        with pytest.raises(rp.WorkerDied) as caught:
            await bounded(call, 10.0, "a call on a stopped worker")
        took = time.monotonic() - started
        assert took < SHORT.heartbeat_timeout + 5.0
        error = caught.value
        assert error.function == "Echo.sleep"
        assert "heartbeat" in str(error) or "stopped answering" in str(error)
        with pytest.raises(rp.WorkerDied):
            async for _ in reader:
                pass
        failure = await failures.first(10.0)
        assert "stopped answering" in str(failure) or "heartbeat" in str(failure)
        # The stopped process was killed and reaped.
        await wait_until(lambda: process_state(w.pid) is None, 10.0, "the stopped worker reaped")
    finally:
        if alive(w.pid):
            os.kill(w.pid, signal.SIGKILL)
        await w.close()
    await no_zombies()


# ---------------------------------------------------------------------- the master dies


MASTER_SCRIPT = """
import asyncio, json, os, sys
sys.path.insert(0, {repo!r})
import rpc_parallel as rp
from tests.workers.workers import Echo


async def main() -> None:
    pids = {{}}
    handles = []
    for mode in ("connection_closed", "heartbeat_timeout", "called_shutdown"):
        handle = await Echo.spawn(0, shutdown_on=mode, redirect_stdout=rp.DevNull(),
                                  redirect_stderr=rp.DevNull())
        handles.append(handle)
        assert await handle.run(Echo.add, 1, 1) == 2
        pids[mode] = handle.pid
    child = await handles[0].run(Echo.spawn_and_keep, 0)  # a grandchild too
    pids["grandchild"] = child
    print(json.dumps(pids), flush=True)
    await asyncio.Event().wait()


rp.start_app(main, rpc_settings=rp.RpcSettings(heartbeat_interval=0.2, heartbeat_timeout=1.5))
"""


async def test_master_sigkill_ends_every_worker_but_called_shutdown(tmp_path: Path) -> None:
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent(MASTER_SCRIPT.format(repo=str(REPO))))
    master = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE,
    )
    survivor: int | None = None
    try:
        assert master.stdout is not None
        line = await bounded(master.stdout.readline(), 60.0, "the master's worker pids")
        pids: dict[str, int] = json.loads(line)
        survivor = pids["called_shutdown"]
        assert all(alive(pid) for pid in pids.values())
        master.kill()
        assert await master.wait() == -signal.SIGKILL
        for mode in ("connection_closed", "heartbeat_timeout", "grandchild"):
            await gone(pids[mode], 15.0)
        # The called_shutdown worker outlives its master.
        assert alive(survivor)
    finally:
        if master.returncode is None:
            master.kill()
            await master.wait()
        if survivor is not None and alive(survivor):
            os.kill(survivor, signal.SIGKILL)
            await gone(survivor, 10.0)


# ---------------------------------------------------------------------- start-up failures


async def check_nothing_left(name: str) -> None:
    """No process of the failed spawn is alive and no child of ours is a zombie."""
    assert pids_with_argument(name) == []
    await no_zombies()


async def test_spawn_import_error(capfd: pytest.CaptureFixture[str]) -> None:
    name = f"fragile-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    with pytest.raises(rp.SpawnError) as caught:
        # stderr to /dev/null: until it has registered, a worker's stderr is forwarded anyway.
        await Fragile.spawn(None, name=name, env={"RPC_PARALLEL_TEST_BREAK_IMPORT": "1"},
                            redirect_stderr=rp.DevNull(), connection_timeout=10.0)
    assert time.monotonic() - started < 10.0
    assert "broken on purpose" in caught.value.stderr_tail
    assert "broken on purpose" in str(caught.value)
    assert "ImportError" in caught.value.stderr_tail
    assert f"[{name}] ImportError: fragile: broken on purpose" in capfd.readouterr().err
    await check_nothing_left(name)
    # Without the marker the same module works.
    async with await Fragile.spawn(None) as w:
        assert await w.run(Fragile.ping) == "pong"


async def test_spawn_bad_python() -> None:
    name = f"badpython-{uuid.uuid4().hex[:6]}"
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(
            Echo.spawn(0, name=name, how=rp.Local(python="/nonexistent/python")), 10.0, "spawn"
        )
    assert "/nonexistent/python" in str(caught.value)
    await check_nothing_left(name)


async def test_spawn_init_worker_state_raises() -> None:
    name = f"initfails-{uuid.uuid4().hex[:6]}"
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(InitFails.spawn("init broke", name=name), 10.0, "spawn")
    text = str(caught.value)
    assert "ValueError" in text and "init broke" in text
    assert "raise ValueError(message)" in text
    assert "init is about to fail" in caught.value.stderr_tail
    await check_nothing_left(name)


async def test_spawn_never_registers_within_connection_timeout(tmp_path: Path) -> None:
    name = f"silent-{uuid.uuid4().hex[:6]}"
    pid_file = tmp_path / "pid"
    prefix = ["sh", "-c", f'echo $$ > {pid_file}; echo "waiting forever" >&2; sleep 30; exec "$@"',
              "sh"]
    started = time.monotonic()
    with pytest.raises(rp.SpawnError) as caught:
        await Echo.spawn(0, name=name, how=rp.Wrap(prefix), connection_timeout=1.0)
    took = time.monotonic() - started
    assert 1.0 <= took < 6.0
    assert "connection_timeout" in str(caught.value)
    assert "waiting forever" in caught.value.stderr_tail
    await check_nothing_left(name)
    # Not even the wrapper's own child (the sleep) is left behind.
    wrapper = int(pid_file.read_text())
    assert process_state(wrapper) is None
    assert group_members(wrapper) == []


# ---------------------------------------------------------------------- protocol errors


async def test_wrong_types_on_the_wire_are_protocol_errors() -> None:
    async with await Echo.spawn(0) as w:
        with pytest.raises(rp.ProtocolError, match=r"Echo\.add: argument 'y'.*expected int"):
            await w.run(Echo.add, 1, y="two")  # type: ignore[arg-type]
        with pytest.raises(rp.ProtocolError, match=r"Echo\.add: argument 'x'.*expected int"):
            await w.run(Echo.add, "one")  # type: ignore[call-overload]
        with pytest.raises(rp.ProtocolError, match=r"Echo\.count: argument 'n'.*expected int"):
            # A pipe's reader comes back at once; the refusal arrives through it.
            reader = await w.run(Echo.count, "x")  # type: ignore[call-overload]
            await bounded(anext(reader), 10.0, "the refusal of a pipe call")
        with pytest.raises(rp.ProtocolError, match=r"Echo\.wrong_result: result.*expected int"):
            await w.run(Echo.wrong_result)
        with pytest.raises(rp.ProtocolError, match=r"Echo\.total: stream item.*expected int"):
            await w.run(Echo.total, 1, ["a"])  # type: ignore[call-overload]
        # A function of another worker type is unknown to this one.
        with pytest.raises(rp.ProtocolError, match=r"InitFails\.ping"):
            await w.run(InitFails.ping)  # type: ignore[call-overload]
        # None of that hurt the worker.
        assert await w.run(Echo.add, 1, 1) == 2


async def test_wrong_spawn_init_argument_is_a_protocol_error() -> None:
    before = set(pids_with_argument("worker"))
    with pytest.raises(rp.ProtocolError, match=r"Echo\.spawn: init argument.*expected int"):
        await Echo.spawn("x")  # type: ignore[arg-type]
    with pytest.raises(rp.ProtocolError, match=r"InitFails\.spawn: init argument.*expected str"):
        await InitFails.spawn(3)  # type: ignore[arg-type]
    assert set(pids_with_argument("worker")) <= before  # nothing was started
    await no_zombies()
