"""#11.7 init_timeout, #11.8 calls into a worker's own functions, #11.9 plain def one at a
time, #11.10 unsendable types found at definition, #11.13 small things."""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

import pytest

import rpc_parallel as rp

from ..workers.support import bounded
from .workers import Bank, RayStyle, SlowInit


@pytest.mark.timeout(30)
async def test_slow_init_is_not_bounded_by_connection_timeout() -> None:
    async with await bounded(SlowInit.spawn(3.0, connection_timeout=1.5), 20.0, "spawn") as w:
        assert await w.run(SlowInit.ping) == "pong"


@pytest.mark.timeout(30)
async def test_init_timeout_bounds_init_worker_state_and_says_so() -> None:
    started = time.monotonic()
    spawn: Any = SlowInit.spawn
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(spawn(60.0, init_timeout=1.0), 15.0, "spawn with init_timeout")
    assert time.monotonic() - started < 10.0
    text = str(caught.value)
    assert "init_timeout" in text and "init_worker_state" in text, text
    assert "did not register" not in text


@pytest.mark.timeout(30)
async def test_worker_calls_its_own_decorated_function_as_a_method() -> None:
    async with await Bank.spawn(0) as w:
        assert await bounded(w.run(Bank.put_via_self), 10.0, "put_via_self") == [1, 2]


@pytest.mark.timeout(30)
async def test_plain_def_functions_run_one_at_a_time_by_default() -> None:
    async with await Bank.spawn(0) as w:
        await bounded(asyncio.gather(*(w.run(Bank.busy, 0.3) for _ in range(4))), 15.0,
                      "four plain-def calls")
        assert await w.run(Bank.concurrency) == 1


@pytest.mark.timeout(30)
async def test_unsendable_parameter_type_is_refused_at_definition_or_spawn() -> None:
    class Opaque:
        pass

    error: BaseException | None = None
    try:
        class Carrier(rp.Worker[None]):
            @rp.rpc
            async def take(self, thing: Opaque) -> int:
                return 0

        # Not at definition: then at spawn, before any process starts.
        try:
            await bounded(Carrier.spawn(None), 15.0, "spawn")
        except Exception as raised:
            error = raised
    except Exception as raised:
        error = raised
    assert error is not None
    text = str(error)
    assert "Carrier.take" in text and "thing" in text and "Opaque" in text, text


@pytest.mark.timeout(30)
async def test_numpy_scalars_pass_where_float_and_int_are_declared() -> None:
    np = pytest.importorskip("numpy")
    async with await Bank.spawn(0) as w:
        assert await w.run(Bank.echo_float, np.float64(1.5)) == 1.5
        assert await w.run(Bank.echo_int, np.int64(7)) == 7


@pytest.mark.timeout(30)
async def test_timezone_aware_datetime_keeps_its_instant_and_a_timezone() -> None:
    when = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    async with await Bank.spawn(0) as w:
        back = await w.run(Bank.echo_time, when)
    assert back == when  # the same instant
    assert back.tzinfo is not None  # (in UTC or with its offset: the guide says which)


@pytest.mark.timeout(30)
async def test_ray_style_init_gets_a_hint_to_use_init_worker_state() -> None:
    try:
        w = await bounded(RayStyle.spawn(3), 15.0, "spawn")
    except Exception as error:
        assert "init_worker_state" in str(error), error
    else:
        await w.close()
        pytest.fail("a worker class with __init__(self, offset) spawned without a hint")
