"""#11.11, more cases: ``rp.blocking`` streams, errors by type, connections from a script,
closing at exit, and the handle check across event loops."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import rpc_parallel as rp

from .support import REPO, run_program, write_program
from .workers import Bank, InsufficientFunds


class Streams(rp.Worker[None]):
    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @rp.pipe
    def forever(self) -> Iterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    @rp.state
    async def watch(self) -> tuple[str, AsyncIterator[int]]:
        async def updates() -> AsyncIterator[int]:
            yield 1
            yield 2

        return "state", updates()

    @rp.reverse_pipe
    async def total(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers])


class Greeter(rp.Worker[None]):
    async def init_connection_state(self, arg: object) -> object:
        return arg

    @rp.rpc
    async def greet(self, name: str) -> str:
        return f"{self.connection_state}, {name}"

    @rp.rpc
    def double(self, x: int) -> int:
        return 2 * x


@pytest.mark.timeout(60)
def test_submit_and_connections() -> None:
    with rp.blocking.spawn(Greeter, None) as w:
        futures = [w.submit(Greeter.double, i) for i in range(20)]
        assert [f.result(timeout=10.0) for f in futures] == [2 * i for i in range(20)]
        with w.connect("hello") as hello, w.connect("hi") as hi:
            assert hello.run(Greeter.greet, "ann") == "hello, ann"
            assert hi.run(Greeter.greet, "bob") == "hi, bob"
            assert hi.submit(Greeter.double, 4).result(timeout=10.0) == 8
        assert w.run(Greeter.double, 5) == 10  # the handle goes on after its connections


@pytest.mark.timeout(60)
def test_streams_are_plain_iterators() -> None:
    with rp.blocking.spawn(Streams, None) as w:
        assert list(w.run(Streams.count, 4)) == [0, 1, 2, 3]
        initial, updates = w.run(Streams.watch)
        assert initial == "state" and list(updates) == [1, 2]
        with w.run(Streams.forever) as endless:  # closing stops the worker's generator
            assert [next(endless) for _ in range(3)] == [0, 1, 2]
        assert w.run(Streams.total, iter([1, 2, 3])) == 6  # type: ignore[arg-type]
        assert list(w.run(Streams.count, 2)) == [0, 1]  # the worker goes on


@pytest.mark.timeout(60)
def test_errors_by_type_and_close() -> None:
    w = rp.blocking.spawn(Bank, 10, name="blocking-bank")
    try:
        assert w.name == "blocking-bank" and isinstance(w.handle, rp.WorkerHandle)
        with pytest.raises(InsufficientFunds) as caught:
            w.run(Bank.withdraw, 50)
        assert caught.value.args == (50, 10) and isinstance(caught.value, rp.RemoteError)
        with pytest.raises(KeyError):
            w.run(Bank.lookup, "nope")
    finally:
        w.close()
    deadline = time.monotonic() + 10.0
    while _alive(w.pid):
        assert time.monotonic() < deadline, "the worker did not exit after close()"
        time.sleep(0.05)
    with pytest.raises(rp.ConnectionClosed):
        w.run(Bank.withdraw, 1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


SCRIPT = """
import rpc_parallel as rp
from tests.newuser.workers import Bank

if __name__ == "__main__":
    with rp.blocking.spawn(Bank, 10) as w:
        print("left", w.run(Bank.withdraw, 3), flush=True)
    kept = rp.blocking.spawn(Bank, 5)  # never closed: closed at exit
    print("pid", kept.pid, flush=True)
"""


@pytest.mark.timeout(60)
async def test_a_script_using_rp_blocking_leaves_nothing_running(tmp_path: Path) -> None:
    ran = await run_program(write_program(tmp_path, "script.py", SCRIPT), timeout=30.0)
    assert not ran.timed_out and ran.returncode == 0, ran.err
    assert "left 7" in ran.out
    kept = int(ran.out.split("pid ")[1].split()[0])
    assert len(ran.workers_seen) == 2
    deadline = time.monotonic() + 10.0
    while _alive(kept):
        assert time.monotonic() < deadline, "the worker left open outlived the script"
        await asyncio.sleep(0.05)
    assert not ran.err.strip(), ran.err


JUPYTER_LIKE = """
import asyncio
import rpc_parallel as rp
from tests.newuser.workers import Bank

async def cell() -> None:  # a notebook cell: a loop is running; rp.blocking still works
    with rp.blocking.spawn(Bank, 10) as w:
        print("left", w.run(Bank.withdraw, 4))

asyncio.run(cell())
"""


@pytest.mark.timeout(60)
async def test_rp_blocking_works_inside_a_running_loop(tmp_path: Path) -> None:
    ran = await run_program(write_program(tmp_path, "cell.py", JUPYTER_LIKE), timeout=30.0)
    assert not ran.timed_out and ran.returncode == 0, ran.err
    assert "left 6" in ran.out


@pytest.mark.timeout(30)
async def test_the_other_loop_error_names_both_loops() -> None:
    """The check itself, in this process: a handle of this loop used from another thread's
    loop."""
    async with await Bank.spawn(1) as w:
        def elsewhere() -> str:
            async def use() -> None:
                await w.run(Bank.withdraw, 1)

            try:
                asyncio.run(use())
            except rp.Error as error:
                return str(error)
            return "no error"

        text = await asyncio.to_thread(elsewhere)
        assert text.count(" at 0x") == 2, text
        assert "running" in text and "rp.blocking" in text, text
        assert await w.run(Bank.withdraw, 1) == 0  # fine in its own loop


@pytest.mark.timeout(30)
async def test_submit_from_another_loop_is_refused_and_works_in_its_own() -> None:
    """``submit`` makes the same check per call, by a cheaper test first: another thread's
    loop is refused, before any frame is written; this loop's calls go on."""
    async with await Bank.spawn(5) as w:
        def elsewhere() -> str:
            async def use() -> None:
                await w.submit(Bank.withdraw, 1)

            try:
                asyncio.run(use())
            except rp.Error as error:
                return str(error)
            return "no error"

        for _ in range(2):
            text = await asyncio.to_thread(elsewhere)
            assert "belongs to the event loop it was made in" in text, text
        results = await asyncio.gather(*(w.submit(Bank.withdraw, 1) for _ in range(3)))
        assert sorted(results) == [2, 3, 4]  # Nothing was withdrawn from the other loop.


CTRL_C = """
import pathlib
import sys
import time

import rpc_parallel as rp


class Slow(rp.Worker[str]):
    async def init_worker_state(self, marker: str) -> None:
        self.marker = marker

    @rp.rpc
    def sleep(self, seconds: float) -> None:
        pathlib.Path(self.marker).write_text("sleeping")
        time.sleep(seconds)


if __name__ == "__main__":
    with rp.blocking.spawn(Slow, sys.argv[1]) as w:
        print("pid", w.pid, flush=True)
        w.run(Slow.sleep, 120.0)
"""


@pytest.mark.timeout(60)
async def test_ctrl_c_while_waiting_cancels_and_closes(tmp_path: Path) -> None:
    script = write_program(tmp_path, "ctrl_c.py", CTRL_C)
    marker = tmp_path / "marker"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), str(marker), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=str(tmp_path))
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 20.0)
        worker = int(line.split()[1])
        deadline = time.monotonic() + 20.0
        while not marker.exists():
            assert time.monotonic() < deadline, "the call never started"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 20.0)
        assert time.monotonic() - started < 10.0
        assert b"KeyboardInterrupt" in err
        deadline = time.monotonic() + 10.0
        while _alive(worker):
            assert time.monotonic() < deadline, "the worker outlived the interrupted script"
            await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
