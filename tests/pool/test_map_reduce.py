"""rp.map_reduce with real worker processes: order, laziness, batching, failures, stopping."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import rpc_parallel as rp
from rpc_parallel import map_reduce as mr
from rpc_parallel.pool._engine import MAX_BATCH, MAX_DEPTH, RAMP

from ..workers.support import bounded, children, cmdline_bytes, wait_until, zombie_children
from .functions import (
    AddOne,
    Blob,
    Busy,
    CombineFails,
    DieAlways,
    DieOnce,
    DieOnceSum,
    FailAt,
    FindTen,
    FirstSlow,
    HitThenStall,
    InitFails,
    Jittery,
    Offset,
    Slow,
    Spell,
    Sum,
    Tick,
    WrongOutput,
)

TWO = mr.Config(local=2)


def worker_pids() -> list[int]:
    """Live worker processes that are children of this test process."""
    found = []
    for pid, state in children().items():
        try:
            if state != "Z" and b"rpc_parallel\0worker\0" in cmdline_bytes(pid):
                found.append(pid)
        except OSError:
            continue
    return found


async def no_workers(within: float = 10.0) -> float:
    """Wait until every worker has exited and been reaped (no zombie either)."""
    return await wait_until(lambda: not worker_pids() and not zombie_children(), within,
                            "every map worker to exit and be reaped")


class Counting:
    """An endless input that counts how far it has been read."""

    def __init__(self) -> None:
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        while True:
            yield self.read
            self.read += 1


async def arange(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i
        if i % 50 == 0:
            await asyncio.sleep(0)


# ---------------------------------------------------------------------- results and order


async def test_map_keeps_input_order_async_and_plain_def() -> None:
    out = [y async for y in mr.map(TWO, range(300), Jittery, None)]
    assert out == [x * 10 for x in range(300)]
    out = [y async for y in mr.map(TWO, arange(500), Offset, 1000)]
    assert out == [x + 1000 for x in range(500)]


async def test_collect_and_batches_give_the_outputs_in_input_order() -> None:
    assert await mr.map(TWO, range(300), Jittery, None).collect() == [x * 10 for x in range(300)]
    assert await mr.map(TWO, arange(500), Offset, 7).collect() == [x + 7 for x in range(500)]
    assert await mr.map(TWO, [], Offset, 7).collect() == []
    batches = [b async for b in mr.map(TWO, range(5000), Offset, 1).batches()]
    assert [y for b in batches for y in b] == [x + 1 for x in range(5000)]
    assert all(batches) and len(batches) > 1  # lists as the workers answered them
    await no_workers()


async def test_map_outputs_are_read_one_way_only() -> None:
    outputs = mr.map(TWO, range(100), Offset, 0)
    assert await anext(outputs) == 0
    with pytest.raises(RuntimeError, match="already read by async for"):
        outputs.batches()
    with pytest.raises(RuntimeError, match="already read by async for"):
        await outputs.collect()
    assert [y async for y in outputs] == list(range(1, 100))  # the rest, nothing lost
    await outputs.aclose()
    taken = mr.map(TWO, range(100), Offset, 0)
    await taken.collect()
    with pytest.raises(RuntimeError, match=r"already read by collect\(\)"):
        taken.__aiter__()
    await no_workers()


async def test_collect_raises_a_failure_with_its_index_and_stops_every_worker() -> None:
    with pytest.raises(rp.RemoteError) as caught:
        await mr.map(TWO, range(100), FailAt, 37).collect()
    assert caught.value.index == 37  # type: ignore[attr-defined]
    await no_workers()


async def test_leaving_batches_early_or_cancelling_collect_stops_every_worker() -> None:
    outputs = mr.map(TWO, Counting(), Slow, None)
    async for batch in outputs.batches():
        assert batch and worker_pids()
        break
    await outputs.aclose()
    await no_workers(5.0)
    task = asyncio.ensure_future(mr.map(TWO, Counting(), Slow, None).collect())
    await wait_until(lambda: len(worker_pids()) == 2, 20.0, "the map's workers")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task, 10.0, "the cancelled collect")
    await no_workers(5.0)


async def test_map_unordered_yields_indices_in_completion_order() -> None:
    pairs = [p async for p in mr.map_unordered(TWO, range(200), FirstSlow, None)]
    assert sorted(pairs) == [(i, i * 10) for i in range(200)]
    # Input 0 takes 0.5 s while the other worker maps the rest: it completes late.
    assert [i for i, _ in pairs].index(0) > 10


async def test_map_reduce_combines_only_neighbours() -> None:
    expected = "".join(f"{x}," for x in range(600))
    assert await mr.map_reduce(TWO, range(600), Spell, None) == expected
    assert await mr.map_reduce(TWO, arange(600), Spell, None) == expected


async def test_map_reduce_commutative() -> None:
    assert await mr.map_reduce_commutative(TWO, range(5000), Sum, None) == sum(range(5000))
    assert await mr.map_reduce_commutative(TWO, [41], Sum, None) == 41


async def test_empty_inputs() -> None:
    assert await mr.map_reduce(TWO, [], Sum, None) is None
    assert await mr.map_reduce_commutative(TWO, iter(()), Sum, None) is None
    assert [y async for y in mr.map(TWO, [], AddOne, None)] == []
    assert await mr.find_map(TWO, arange(0), FindTen, 3) is None


async def test_find_map_on_an_endless_input_reads_boundedly_and_stops_every_worker() -> None:
    source = Counting()
    hit = await bounded(mr.find_map(TWO, source, FindTen, 10), 30.0, "find_map")
    assert hit == 1000
    # The first non-None in input order; read ahead of it only within a bounded window.
    assert source.read < 20_000, source.read
    assert not worker_pids()  # stopped before find_map returned
    assert await mr.find_map(TWO, range(50), FindTen, 999) is None


async def test_a_slow_head_does_not_make_map_read_ahead_without_bound() -> None:
    source = Counting()
    outputs = mr.map(TWO, source, FirstSlow, None)
    assert await bounded(anext(outputs), 20.0, "the first output") == 0
    await outputs.aclose()
    # While input 0 took 0.5 s, the other worker could have mapped millions of instant
    # inputs: the window ahead of the consumer (twice the batches two workers hold in
    # flight) stopped the reading.
    assert source.read <= 2 * MAX_DEPTH * 2 * MAX_BATCH + MAX_BATCH, source.read
    await no_workers()


async def test_find_map_stops_workers_busy_in_long_cpu_bound_maps_at_once() -> None:
    started = time.monotonic()
    hit = await bounded(mr.find_map(TWO, range(10), HitThenStall, None), 20.0, "find_map")
    assert hit == 42
    # The other worker was a minute away from finishing its input: it was stopped at once,
    # not waited for (nor left to the 5 s grace before a kill).
    assert time.monotonic() - started < 4.0
    assert not worker_pids()


async def test_small_items_are_batched_by_cost_and_large_items_travel_alone() -> None:
    async def sizes(inputs: object, function: type[mr.MapFunction[None, object, int]]) -> list[int]:
        run = mr._Run(TWO, function, None, inputs, retries=1, progress=False,  # type: ignore[arg-type]
                      reduce=False)
        async with run:
            found = [(batch.start, len(batch.items)) async for batch, _ in run.batches()]
        return [size for _, size in sorted(found)]

    tiny = await sizes(range(50_000), AddOne)  # type: ignore[arg-type]
    assert sum(tiny) == 50_000
    assert max(tiny) >= 1000 and len(tiny) < 500, (max(tiny), len(tiny))
    busy = await sizes(range(200), Busy)  # type: ignore[arg-type]
    assert sum(busy) == 200 and max(busy) <= 20, busy  # ~5 ms each: a few per batch
    large = await sizes([b"x" * (200 << 10)] * 12 + [b"y"] * 3, Blob)  # type: ignore[arg-type]
    assert large[:12] == [1] * 12


async def test_collect_sends_full_batches_at_once_where_async_for_ramps_up() -> None:
    async def sizes(ramp: bool) -> list[int]:
        batches = mr._ordered_batches(TWO, range(50_000), AddOne, None, 1, False, ramp)
        async with contextlib.aclosing(batches):
            return [len(outputs) async for outputs in batches]

    ramped, whole = await sizes(True), await sizes(False)
    assert sum(ramped) == sum(whole) == 50_000
    # Both measure the cost with single inputs first; then async for (and batches()) start
    # small to hurry the first outputs, and a map read by collect() goes full size at once.
    assert next(size for size in ramped if size > 1) <= RAMP, ramped
    assert next(size for size in whole if size > 1) > RAMP, whole
    assert len(whole) < len(ramped), (whole, ramped)
    for read, ramp in ((lambda o: o.collect(), False), (lambda o: o.batches(), True),
                       (lambda o: o.__aiter__(), True)):
        outputs = mr.map(TWO, range(10), AddOne, None)
        start, asked = outputs._start, []
        outputs._start = lambda r, start=start, asked=asked: asked.append(r) or start(r)
        taken = read(outputs)
        if asyncio.iscoroutine(taken):
            assert await taken == list(range(1, 11))
        assert asked == [ramp]
        await outputs.aclose()
    await no_workers()


# ---------------------------------------------------------------------- failures


async def test_an_exception_in_map_is_a_remote_error_with_the_input_index() -> None:
    with pytest.raises(rp.RemoteError) as caught:
        async for _ in mr.map(TWO, range(100), FailAt, 37):
            pass
    error = caught.value
    assert error.index == 37  # type: ignore[attr-defined]
    assert error.remote_type == "KeyError" and error.function == "FailAt.map"
    assert str(error).startswith("FailAt.map raised KeyError")
    assert "no such thing as 37" in str(error)
    assert "input 37" in "".join(getattr(error, "__notes__", []))
    await no_workers()


async def test_an_exception_in_combine_is_a_remote_error() -> None:
    with pytest.raises(rp.RemoteError) as caught:
        await mr.map_reduce(TWO, range(100), CombineFails, None)
    assert caught.value.remote_type == "ValueError"
    assert caught.value.function == "CombineFails.combine"
    assert isinstance(caught.value.index, int)  # type: ignore[attr-defined]


async def test_wrong_input_param_and_output_types_are_protocol_errors() -> None:
    with pytest.raises(rp.ProtocolError, match=r"AddOne.*input 2") as caught:
        async for _ in mr.map(TWO, [1, 2, "three", 4], AddOne, None):  # type: ignore[misc]
            pass
    assert caught.value.index == 2  # type: ignore[attr-defined]
    # A plain def map decodes its batch in the worker's thread: the bad input is named
    # within a batch of thousands as well.
    inputs: list[object] = [*range(30_000)]
    inputs[20_000] = "twenty thousand"
    with pytest.raises(rp.ProtocolError, match=r"Offset.*input 20000") as caught:
        await mr.map(TWO, inputs, Offset, 1).collect()  # type: ignore[misc]
    assert caught.value.index == 20_000  # type: ignore[attr-defined]
    with pytest.raises(rp.ProtocolError, match="Offset: param"):
        async for _ in mr.map(TWO, [1], Offset, "not an int"):  # type: ignore[misc]
            pass
    with pytest.raises(rp.ProtocolError, match=r"WrongOutput.*output"):
        async for _ in mr.map(TWO, [1], WrongOutput, None):
            pass
    with pytest.raises(TypeError, match=r"needs a subclass of rp\.MapReduceFunction"):
        await mr.map_reduce(TWO, [1], AddOne, None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="top level"):
        class Local(rp.MapFunction[None, int, int]):
            async def map(self, x: int) -> int:
                return x

        async for _ in mr.map(TWO, [1], Local, None):
            pass


async def test_an_init_that_raises_is_a_spawn_error_and_nothing_is_left() -> None:
    with pytest.raises(rp.SpawnError, match="no model file"):
        async for _ in mr.map(TWO, range(10), InitFails, None):
            pass
    await no_workers()


async def test_a_worker_that_dies_has_its_items_retried_on_a_new_worker(tmp_path: Path) -> None:
    marker = tmp_path / "died"
    out = [y async for y in mr.map(TWO, range(40), DieOnce, str(marker))]
    assert out == [x * 2 for x in range(40)]
    assert marker.read_text() == "died"  # input 7 did kill a worker once


async def test_a_worker_killed_by_sigkill_mid_map_is_replaced_and_nothing_is_lost() -> None:
    outputs: list[int] = []
    killed: list[int] = []
    async for y in mr.map(TWO, range(300), Tick, None):
        outputs.append(y)
        if len(outputs) == 20:
            victim = worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
    assert outputs == [x + 1 for x in range(300)]
    assert killed and killed[0] not in worker_pids()
    await no_workers()


async def test_find_map_on_an_endless_async_input() -> None:
    async def endless() -> AsyncIterator[int]:
        i = 0
        while True:
            yield i
            i += 1

    assert await bounded(mr.find_map(TWO, endless(), FindTen, 500), 30.0, "find_map") == 50_000


async def test_a_worker_death_in_a_reduce_is_retried(tmp_path: Path) -> None:
    marker = tmp_path / "died"
    total = await mr.map_reduce(TWO, range(300), DieOnceSum, str(marker))
    assert total == sum(range(300)) and marker.exists()


async def test_a_worker_death_beyond_retries_is_worker_died_with_the_index(tmp_path: Path) -> None:
    with pytest.raises(rp.WorkerDied) as caught:
        async for _ in mr.map(TWO, range(40), DieOnce, str(tmp_path / "m"), retries=0):
            pass
    # No retry: the input is known to the batch it was in (one item after a retry, below).
    assert 7 in caught.value.indices  # type: ignore[attr-defined]
    assert caught.value.index == caught.value.indices[0]  # type: ignore[attr-defined]
    assert caught.value.exit_code == 3
    with pytest.raises(rp.WorkerDied) as caught:
        async for _ in mr.map_unordered(TWO, range(40), DieAlways, None):
            pass
    assert caught.value.index == 7  # type: ignore[attr-defined]
    assert list(caught.value.indices) == [7]  # type: ignore[attr-defined]
    assert "input 7:" in str(caught.value) and "2 time(s)" in str(caught.value)
    await no_workers()


# ---------------------------------------------------------------------- stopping early


async def test_leaving_async_for_early_stops_every_worker() -> None:
    async for y in mr.map(TWO, Counting(), Slow, None):
        assert worker_pids()
        if y == 3:
            break
    await no_workers(5.0)


async def test_cancelling_the_task_stops_every_worker() -> None:
    started = asyncio.Event()

    async def consume() -> None:
        async for _ in mr.map(TWO, Counting(), Slow, None):
            started.set()

    task = asyncio.ensure_future(consume())
    await bounded(started.wait(), 20.0, "the first output")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await bounded(task, 10.0, "the cancelled map")
    await no_workers(5.0)


async def test_an_exception_in_the_consumer_stops_every_worker() -> None:
    with pytest.raises(RuntimeError, match="consumer"):
        async for _ in mr.map_unordered(TWO, Counting(), Slow, None):
            raise RuntimeError("the consumer failed")
    await no_workers(5.0)


# ---------------------------------------------------------------------- progress


async def test_progress_is_logged_when_not_a_terminal(caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from rpc_parallel.pool import _progress

    monkeypatch.setattr(_progress, "LOG_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="rpc_parallel.map_reduce"):
        total = await mr.map_reduce_commutative(TWO, list(range(300)), Sum, None, progress=True)
    assert total == sum(range(300))
    lines = [r.getMessage() for r in caplog.records if r.name == "rpc_parallel.map_reduce"]
    assert any("/300 items" in line and "ETA" in line for line in lines), lines
    assert "Sum: 300/300 items" in lines[-1] and "finished" in lines[-1]


def test_progress_draws_a_bar_on_a_terminal(tmp_path: Path) -> None:
    """With tqdm installed (the ``progress`` extra) and stderr a terminal: a bar."""
    pytest.importorskip("tqdm")
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios

    script = tmp_path / "bar.py"
    script.write_text(
        "import rpc_parallel as rp\n"
        "from tests.pool.functions import Sum\n"
        "async def main() -> None:\n"
        "    config = rp.map_reduce.Config(local=2)\n"
        "    total = await rp.map_reduce.map_reduce_commutative(\n"
        "        config, range(2000), Sum, None, progress=True)\n"
        "    assert total == sum(range(2000))\n"
        "rp.start_app(main)\n"
    )
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    root = Path(__file__).resolve().parents[2]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root / "src"), str(root), os.environ.get("PYTHONPATH", "")])}
    try:
        result = subprocess.run([sys.executable, str(script)], stderr=follower,
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                env=environment, timeout=60, cwd=root)
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert result.returncode == 0, drawn.decode(errors="replace")
    text = drawn.decode(errors="replace")
    assert "Sum" in text and "2000/2000" in text and "item/s" in text, text


# ---------------------------------------------------------------------- config


def test_config_defaults_to_the_usable_cores_and_refuses_bad_values() -> None:
    assert mr.Config().local == len(os.sched_getaffinity(0))
    assert mr.Config(local=0, remote=[(rp.Local(), 3)]).workers() == 3
    options = mr.Config(local=1, remote=[(rp.Wrap(["nice"]), 2)],
                        redirect_stderr=rp.DevNull()).spawn_options()
    assert [o.get("how") for o in options] == [None, rp.Wrap(["nice"]), rp.Wrap(["nice"])]
    assert all(o["redirect_stderr"] == rp.DevNull() for o in options)
    for bad in ({"local": -1}, {"local": "2"}, {"local": 0}, {"remote": [(rp.Local(), -1)]}):
        with pytest.raises(ValueError, match="Config"):
            mr.Config(**bad)


def test_config_from_slurm_reads_the_allocation() -> None:
    environ = {
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "cn[007-009,12],gpu-a1",
        "SLURM_JOB_CPUS_PER_NODE": "8(x3),4,16",
        "SLURM_TASKS_PER_NODE": "4(x3),2,0",
        "SLURM_CPUS_PER_TASK": "2",
    }
    config = mr.Config.from_slurm(how=lambda node, cpus: (node, cpus), environ=environ)
    assert config.local == 0
    # One worker per task, on its node (read by launch.slurm_allocation); none on gpu-a1.
    assert list(config.remote) == [
        (("cn007", 2), 4), (("cn008", 2), 4), (("cn009", 2), 4), (("cn12", 2), 2),
    ]
    default = mr.Config.from_slurm(environ=environ)
    how, n = default.remote[0]
    assert isinstance(how, rp.Slurm) and (how.nodelist, how.cpus_per_task, n) == ("cn007", 2, 4)
    with pytest.raises(RuntimeError, match="not inside a Slurm allocation"):
        mr.Config.from_slurm(how=lambda node, cpus: node, environ={})
    with pytest.raises(ValueError, match="SLURM_TASKS_PER_NODE lists 3 nodes"):
        mr.Config.from_slurm(how=lambda n, c: n, environ={
            "SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "a,b", "SLURM_TASKS_PER_NODE": "1(x3)"})


async def test_a_map_starts_on_its_first_worker_up_and_a_later_failed_spawn_is_raised() -> None:
    # One worker starts at once, the other's launcher fails (its process exits at once):
    # the map maps on the first meanwhile, and still raises the failed spawn, leaving nothing.
    config = mr.Config(local=1, remote=[(rp.Wrap(["/bin/false"]), 1)],
                       redirect_stderr=rp.DevNull())
    with pytest.raises(rp.SpawnError):
        async for _ in mr.map(config, range(20), AddOne, None):
            pass
    await no_workers()
