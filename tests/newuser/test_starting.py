"""#11.7, #11.10, #11.13 beyond the reported cases: the two start-up phases and what their
errors say, a plain-def (blocking) ``init_worker_state``, and which declared types are
refused when the class is defined."""

from __future__ import annotations

import datetime
import fractions
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rpc_parallel as rp

from ..workers.support import SHORT, bounded
from .starting import (
    BlockingInit,
    Echoes,
    ExitsInInit,
    HoldsOpaque,
    Leaves,
    Opaque,
    Registered,
    Sendable,
)
from .workers import SlowInit


@pytest.mark.timeout(30)
async def test_plain_def_init_blocking_longer_than_the_heartbeat_timeout_works() -> None:
    """A blocking init holds the worker's loop; the spawn still waits for it (init_timeout
    is none by default) instead of taking the silence for a dead worker."""
    seconds = SHORT.heartbeat_timeout * 2
    async with await bounded(BlockingInit.spawn(seconds), 20.0, "spawn") as w:
        assert await w.run(BlockingInit.loaded_for) == seconds


@pytest.mark.timeout(30)
async def test_connection_timeout_error_names_the_start_phase() -> None:
    hang = rp.Wrap(["sh", "-c", "sleep 30"])
    started = time.monotonic()
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(SlowInit.spawn(0.0, how=hang, connection_timeout=1.0), 15.0, "spawn")
    text = str(caught.value)
    assert "did not start and connect back within connection_timeout (1 s)" in text, text
    assert "init_worker_state" not in text and "killed" in text
    assert time.monotonic() - started < 10.0


@pytest.mark.timeout(30)
async def test_exit_during_init_names_the_init_phase() -> None:
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(ExitsInInit.spawn(5), 15.0, "spawn")
    text = str(caught.value)
    assert "exited with code 5 during init_worker_state" in text, text


@pytest.mark.timeout(30)
async def test_init_timeout_says_how_long_init_ran() -> None:
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(SlowInit.spawn(60.0, init_timeout=0.5), 15.0, "spawn")
    text = str(caught.value)
    assert "init_worker_state did not finish within init_timeout (0.5 s)" in text, text
    assert "it ran " in text and "killed" in text


@pytest.mark.parametrize("bad", [0, -1.0])
async def test_timeouts_must_be_positive(bad: float) -> None:
    spawn: Any = SlowInit.spawn
    with pytest.raises(ValueError, match="init_timeout must be positive"):
        await spawn(0.0, init_timeout=bad)
    with pytest.raises(ValueError, match="connection_timeout must be positive"):
        await spawn(0.0, connection_timeout=bad)


def test_unsendable_class_is_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError) as caught:
        class Carrier(rp.Worker[None]):
            @rp.rpc
            async def take(self, thing: Opaque) -> int:
                return 0
    text = str(caught.value)
    assert "Carrier.take" in text and "'thing'" in text and "starting.Opaque" in text, text


def test_unsendable_result_and_field_are_refused_when_the_class_is_defined() -> None:
    with pytest.raises(TypeError, match=r"Maker\.make: the result is declared .*starting\.Opaque"):
        class Maker(rp.Worker[None]):
            @rp.rpc
            async def make(self) -> Opaque:
                return Opaque()

    with pytest.raises(TypeError, match=r"parameter 'held' is declared .*Opaque \(in .*HoldsOpaque\]\)"):
        class Holder(rp.Worker[None]):
            @rp.pipe
            async def take(self, held: list[HoldsOpaque]) -> AsyncIterator[int]:
                yield 1


def test_sendable_and_registered_types_are_accepted() -> None:
    class Fine(rp.Worker[None]):
        @rp.rpc
        async def take(self, a: Sendable, b: Registered, c: dict[str, tuple[int, ...]] | None,
                       d: rp.WorkerHandle[BlockingInit], e: Any) -> list[Sendable]:
            return [a]

    assert Fine.functions()[0].spec.name == "Fine.take"


@pytest.mark.timeout(30)
async def test_registered_type_travels() -> None:
    """The check accepts what ``register_type`` taught: the value really travels."""
    async with await Echoes.spawn(None) as w:
        assert await bounded(w.run(Echoes.registered, Registered(7)), 10.0, "call") == 7


@pytest.mark.timeout(30)
async def test_what_any_and_datetimes_arrive_as() -> None:
    """What the guide says (section 5): through ``Any`` a dataclass arrives as a dict, tuples
    and sets as lists, an aware datetime in UTC and a naive one as its ISO string; a declared
    aware datetime arrives in UTC, a declared naive one naive."""
    aware = datetime.datetime(2026, 11, 30, 12, 0,
                              tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    naive = datetime.datetime(2026, 11, 30, 12, 0)
    sent = [Sendable("a", {"x"}), (1, 2), {3}, frozenset({4}), aware, naive]
    async with await Echoes.spawn(None) as w:
        back = await bounded(w.run(Echoes.anything, sent), 10.0, "anything")
        assert back == [{"name": "a", "tags": ["x"]}, [1, 2], [3], [4],
                        aware.astimezone(datetime.UTC), "2026-11-30T12:00:00"]
        assert back[4].tzinfo == datetime.UTC
        declared = await w.run(Echoes.when, aware)
        assert declared == aware and declared.utcoffset() == datetime.timedelta(0)
        assert await w.run(Echoes.when, naive) == naive


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("status", "code"), [(4, 4), (None, 0), ("bye", 1)])
async def test_sys_exit_in_a_plain_def_is_the_exit_status(
        tmp_path: Path, status: int | str | None, code: int) -> None:
    w = await Leaves.spawn(None, redirect_stderr=rp.FileTruncate(tmp_path / "stderr"))
    try:
        with pytest.raises(rp.WorkerDied) as caught:
            await bounded(w.run(Leaves.leave, status), 10.0, "the call that exits")
        assert caught.value.exit_code == code, str(caught.value)
        tail = caught.value.stderr_tail
        assert "sys.exit(" in tail and "in leave (" in tail and "Traceback" not in tail, tail
        if isinstance(status, str):
            assert status in tail
    finally:
        await w.close()


@pytest.mark.timeout(30)
async def test_numpy_scalars_of_every_kind_travel_as_python_values() -> None:
    async with await Echoes.spawn(None) as w:
        sent = [np.float32(0.5), np.int8(-3), np.uint64(2**63), np.bool_(True), np.float64(2.5)]
        assert await bounded(w.run(Echoes.anything, sent), 10.0, "call") == [
            0.5, -3, 2**63, True, 2.5]
        with pytest.raises(rp.ProtocolError, match="Fraction cannot be sent"):
            await w.run(Echoes.anything, fractions.Fraction(1, 3))
