"""#8.8: the fault matrix with real processes and real signals.

A worker is killed (SIGKILL) or stopped (SIGSTOP) at each phase of its life — spawn (before
it registers), init (inside ``init_worker_state``), an rpc / a pipe / a reverse pipe in
flight, close — and as the middle of a chain (a worker that spawned a worker). The master is
killed (SIGKILL, as a separate real process) at each of those phases too.

After each fault the test process must hold exactly what it held before — descendants by
pid, zombies, open fds, threads, ``rpc_parallel-*`` entries in its (private) temp dir — within
a bounded wait, and the promised bounds hold: a killed worker fails calls in flight with
``rp.WorkerDied`` within 10 s; a stopped one within ``heartbeat_timeout`` + a margin; a killed
master's workers are gone within ``heartbeat_timeout`` + a margin.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import rpc_parallel as rp

from ..workers.support import (
    SHORT,
    alive,
    bounded,
    group_members,
    process_state,
    wait_until,
)
from ..workers.workers import Echo, Failures
from .slow_import import SlowImport
from .support import Snapshot, descendants, settle, temp_entries
from .workers import SlowInit

REPO = Path(__file__).resolve().parents[2]
KILLED_BOUND = 10.0
STOPPED_BOUND = SHORT.heartbeat_timeout + 5.0
MASTER_BOUND = SHORT.heartbeat_timeout + 5.0
CONNECTION_TIMEOUT = 3.0
CLOSE_BOUND = 15.0
QUIET: dict[str, Any] = {"redirect_stdout": rp.DevNull(), "redirect_stderr": rp.DevNull()}


async def forever() -> AsyncIterator[int]:
    while True:
        yield 1
        await asyncio.sleep(0.005)


async def warm_up() -> Snapshot:
    """One full spawn/call/close so the master server and thread pools exist; then count."""
    async with await Echo.spawn(0, **QUIET) as w:
        await w.run(Echo.add, 1, 1)
        await w.run(Echo.spin, 0.0)
    before = Snapshot.take()
    await settle(before, 10.0, "the warm-up")  # nothing still winding down
    return Snapshot.take()


def signal_process(pid: int, how: signal.Signals) -> None:
    os.kill(pid, how)


async def pid_from(path: Path) -> int:
    await wait_until(lambda: path.exists() and path.read_text().strip() != "", 30.0,
                     f"the pid in {path}")
    return int(path.read_text())  # noqa: ASYNC240 - a few bytes, written already


def bound_for(how: signal.Signals) -> float:
    return KILLED_BOUND if how == signal.SIGKILL else STOPPED_BOUND


SIGNALS = [pytest.param(signal.SIGKILL, id="SIGKILL"), pytest.param(signal.SIGSTOP, id="SIGSTOP")]


# ----------------------------------------------------------------------------- worker faults


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", SIGNALS)
@pytest.mark.parametrize("phase", ["spawn", "init"])
async def test_worker_fault_before_registration(private_tmp: str, tmp_path: Path, phase: str,
                                                how: signal.Signals) -> None:
    before = await warm_up()
    pid_file = tmp_path / "pid"
    if phase == "spawn":
        spawning = asyncio.ensure_future(
            SlowImport.spawn(None, env={"RPH_SLOW_IMPORT": str(pid_file)},
                             connection_timeout=CONNECTION_TIMEOUT, **QUIET))
    else:
        spawning = asyncio.ensure_future(
            SlowInit.spawn(str(pid_file), connection_timeout=CONNECTION_TIMEOUT, **QUIET))
    pid = await pid_from(pid_file)
    signal_process(pid, how)
    started = time.monotonic()
    with pytest.raises(rp.SpawnError):
        await bounded(spawning, CONNECTION_TIMEOUT + bound_for(how), "the failing spawn")
    assert time.monotonic() - started < CONNECTION_TIMEOUT + bound_for(how)
    await wait_until(lambda: process_state(pid) is None, 10.0, "the worker to be reaped")
    await settle(before, 10.0, f"{how.name} at {phase}")


@pytest.mark.xfail(strict=True, reason="found (not in #8): a worker killed before it registered "
                   "leaves its Wrap prefix's children running, and the master keeps their pipes")
@pytest.mark.timeout(60)
async def test_worker_killed_before_registration_takes_its_process_group(
        private_tmp: str, tmp_path: Path) -> None:
    """docs/architecture.md 1.3: killing a worker kills its whole process group, so nothing a
    ``Wrap`` prefix started is left behind — also when the worker was killed from outside."""
    before = await warm_up()
    pid_file = tmp_path / "pid"
    wrap = rp.Wrap(["sh", "-c", 'echo $$ > "$0"; sleep 30; exec "$@"', str(pid_file)])
    spawning = asyncio.ensure_future(
        Echo.spawn(0, how=wrap, connection_timeout=CONNECTION_TIMEOUT, **QUIET))
    pid = await pid_from(pid_file)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(rp.SpawnError):
        await bounded(spawning, KILLED_BOUND, "the failing spawn")
    try:
        await wait_until(lambda: not group_members(pid), 10.0, "the prefix's children to go")
        await settle(before, 10.0, "SIGKILL of a wrapped worker before registration")
    finally:
        for member in group_members(pid):
            os.kill(member, signal.SIGKILL)


async def call_in_flight(w: rp.WorkerHandle[Echo], phase: str) -> asyncio.Future[Any]:
    if phase == "rpc":
        call: asyncio.Future[Any] = asyncio.ensure_future(w.run(Echo.sleep, 60.0))
    elif phase == "pipe":
        reader = await w.run(Echo.endless)
        assert await anext(reader) == 0

        async def drain() -> None:
            async for _ in reader:
                pass

        call = asyncio.ensure_future(drain())
    else:
        call = asyncio.ensure_future(w.run(Echo.swallow, forever()))
    assert await bounded(w.run(Echo.add, 0, 0), 10.0, "a call beside") == 0
    assert not call.done()
    return call


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", SIGNALS)
@pytest.mark.parametrize("phase", ["rpc", "pipe", "reverse_pipe"])
async def test_worker_fault_with_a_call_in_flight(private_tmp: str, phase: str,
                                                  how: signal.Signals) -> None:
    before = await warm_up()
    failures = Failures()
    w = await Echo.spawn(0, on_failure=failures, **QUIET)
    try:
        call = await call_in_flight(w, phase)
        signal_process(w.pid, how)
        started = time.monotonic()
        with pytest.raises(rp.WorkerDied):
            await bounded(call, bound_for(how), f"the {phase} in flight")
        assert time.monotonic() - started < bound_for(how)
        await failures.first(10.0)
        with pytest.raises(rp.WorkerDied):
            await bounded(w.run(Echo.add, 1), 10.0, "a call after the fault")
    finally:
        await bounded(w.close(), 10.0, "close after the fault")
    assert len(failures.items) == 1
    await wait_until(lambda: process_state(w.pid) is None, 10.0, "the worker to be reaped")
    await settle(before, 10.0, f"{how.name} with a {phase} in flight")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", SIGNALS)
async def test_worker_fault_during_close(private_tmp: str, how: signal.Signals) -> None:
    before = await warm_up()
    w = await Echo.spawn(0, **QUIET)
    await w.run(Echo.add, 0, 0)
    closing = asyncio.ensure_future(w.close())
    signal_process(w.pid, how)
    # A stopped worker: the close waits for its peer, then a grace period, then kills. The
    # close may report the death (an rp.Error); it must not hang or raise anything else.
    with contextlib.suppress(rp.Error):
        await bounded(closing, CLOSE_BOUND, "close of a worker hit by a signal")
    await wait_until(lambda: process_state(w.pid) is None, 10.0, "the worker to be reaped")
    await settle(before, 10.0, f"{how.name} during close")


async def kill_the_middle(how: signal.Signals) -> None:
    """The test spawns W1, W1 spawns W2; W1 is hit: calls on W1 fail, W2 goes away."""
    failures = Failures()
    w = await Echo.spawn(0, on_failure=failures, **QUIET)
    try:
        grandchild = await w.run(Echo.spawn_and_keep, 0)
        assert alive(grandchild)
        call = asyncio.ensure_future(w.run(Echo.sleep, 60.0))
        await w.run(Echo.add, 0, 0)
        signal_process(w.pid, how)
        started = time.monotonic()
        with pytest.raises(rp.WorkerDied):
            await bounded(call, bound_for(how), "the call on the middle worker")
        # W2's master (W1) is dead or stopped and then killed: W2 notices within its bound.
        await wait_until(lambda: not alive(grandchild), bound_for(how) + MASTER_BOUND,
                         "the grandchild to exit")
        assert time.monotonic() - started < bound_for(how) + MASTER_BOUND
    finally:
        await bounded(w.close(), 10.0, "close")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", SIGNALS)
async def test_middle_of_a_chain_is_killed(private_tmp: str, how: signal.Signals) -> None:
    before = await warm_up()
    await kill_the_middle(how)
    await settle(before, 10.0, f"{how.name} of the middle worker", files=False)


@pytest.mark.xfail(strict=True, reason="#8.6: the killed middle worker's master and worker "
                   "socket directories are left behind")
@pytest.mark.timeout(90)
async def test_middle_of_a_chain_killed_leaves_no_files(private_tmp: str) -> None:
    before = await warm_up()
    await kill_the_middle(signal.SIGKILL)
    await settle(before, 10.0, "SIGKILL of the middle worker")


# ----------------------------------------------------------------------------- master faults


async def start_master(phase: str, directory: str, pid_file: Path) -> asyncio.subprocess.Process:
    env = dict(os.environ, TMPDIR=directory,
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RPC_PARALLEL_RPC_SETTINGS", None)
    return await asyncio.create_subprocess_exec(
        sys.executable, str(REPO / "tests/hardening/programs/master.py"), phase, str(pid_file),
        stdout=asyncio.subprocess.PIPE, cwd=str(REPO), env=env)


async def master_at(phase: str, directory: str, tmp_path: Path
                    ) -> tuple[asyncio.subprocess.Process, set[int]]:
    """A master process brought to ``phase``, and every process below it.

    ``directory`` is the master's temp dir (not this process's: its leftovers are #8.6's)."""
    os.makedirs(directory, exist_ok=True)
    master = await start_master(phase, directory, tmp_path / "pid")
    assert master.stdout is not None
    line = await bounded(master.stdout.readline(), 60.0, f"the master to reach {phase}")
    assert json.loads(line)["phase"] == phase, line
    below = descendants(master.pid)
    assert below, "the master has no workers"
    return master, below


async def end(master: asyncio.subprocess.Process) -> None:
    if master.returncode is None:
        master.kill()
    await bounded(master.communicate(), 15.0, "the master's output to end")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("phase",
                         ["spawn", "init", "rpc", "pipe", "reverse_pipe", "close", "nested"])
async def test_master_sigkill_ends_every_worker(private_tmp: str, tmp_path: Path,
                                                phase: str) -> None:
    # The loop keeps an fd of its own (/dev/null) once it has started a subprocess with a pipe.
    await (await asyncio.create_subprocess_exec("true", stdout=asyncio.subprocess.PIPE)).communicate()
    before = Snapshot.take()
    master, below = await master_at(phase, os.path.join(private_tmp, "m"), tmp_path)
    try:
        master.kill()
        assert await master.wait() == -signal.SIGKILL
        started = time.monotonic()
        await wait_until(lambda: not any(alive(pid) for pid in below), MASTER_BOUND,
                         f"the master's processes {sorted(below)} to exit")
        assert time.monotonic() - started < MASTER_BOUND
    finally:
        await end(master)
        for pid in below:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    await settle(before, 10.0, f"master killed at {phase}")


@pytest.mark.xfail(strict=True, reason="#8.6: a killed master leaves its socket directories")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
async def test_master_killed_leaves_no_files(private_tmp: str, tmp_path: Path,
                                             how: signal.Signals) -> None:
    master, below = await master_at("rpc", private_tmp, tmp_path)
    try:
        assert temp_entries(private_tmp), "the master made no socket directory"
        master.send_signal(how)
        await master.wait()
        await wait_until(lambda: not any(alive(pid) for pid in below), MASTER_BOUND,
                         "the master's workers to exit")
        await wait_until(lambda: not temp_entries(private_tmp), 10.0,
                         f"no rpc_parallel-* left (left: {temp_entries(private_tmp)})")
    finally:
        await end(master)
        for pid in below:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
