"""#8.7: odd values are refused with ``rp.ProtocolError`` naming the function and the parameter
(so ``except rp.Error`` catches them), never a raw OverflowError / UnicodeEncodeError /
RecursionError; and a reverse-pipe caller's own generator is closed when the worker dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest

import rpc_parallel as rp

from ..workers.support import bounded
from .support import poll
from .workers import SURROGATE_TEXT, Odd


def nested(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth):
        value = [value]
    return value


ODD_ARGUMENTS = {
    "int_over_64_bits": (Odd.echo_int, 2**64, "Odd.echo_int", "x"),
    "negative_int_over_64_bits": (Odd.echo_int, -(2**64), "Odd.echo_int", "x"),
    "lone_surrogate_str": (Odd.echo_str, SURROGATE_TEXT, "Odd.echo_str", "s"),
    "nesting_too_deep": (Odd.echo_nested, nested(100_000), "Odd.echo_nested", "value"),
}


@pytest.mark.xfail(strict=True, reason="#8.7: raw OverflowError/UnicodeEncodeError/RecursionError")
@pytest.mark.timeout(30)
@pytest.mark.parametrize("case", sorted(ODD_ARGUMENTS))
async def test_odd_argument_is_a_protocol_error_naming_function_and_parameter(case: str) -> None:
    function, value, name, parameter = ODD_ARGUMENTS[case]
    async with await Odd.spawn(None) as w:
        with pytest.raises(rp.ProtocolError) as caught:
            await bounded(w.run(function, value), 10.0, "the refused call")  # type: ignore[arg-type]
        text = str(caught.value)
        assert name in text and parameter in text, text
        assert await w.run(Odd.ping) == w.pid  # nothing broke


@pytest.mark.xfail(strict=True, reason="#8.7: a raw OverflowError escapes through an Any parameter")
@pytest.mark.timeout(30)
async def test_odd_value_through_any_is_a_protocol_error() -> None:
    """An ``Any`` parameter: the encoder, not the validator, meets the odd value."""
    async with await Odd.spawn(None) as w:
        for value in (2**64, SURROGATE_TEXT):
            try:
                await bounded(w.run(Odd.echo_any, value), 10.0, "an odd Any argument")
            except rp.Error as error:
                assert "Odd.echo_any" in str(error)
            except Exception as error:
                pytest.fail(f"a raw {type(error).__name__} escaped: {error}")


@pytest.mark.xfail(strict=True, reason="#8.7: raw errors escape for odd values in Any / streams")
@pytest.mark.timeout(30)
async def test_odd_value_as_stream_item_is_a_protocol_error() -> None:
    async def items() -> AsyncIterator[int]:
        yield 1
        yield 2**64

    async with await Odd.spawn(None) as w:
        with pytest.raises(rp.ProtocolError) as caught:
            await bounded(w.run(Odd.consume, items()), 10.0, "a stream with an odd item")
        assert "Odd.consume" in str(caught.value)


@pytest.mark.xfail(strict=True, reason="#8.7: the caller's generator is not closed on death")
@pytest.mark.timeout(30)
async def test_reverse_pipe_callers_generator_is_closed_when_the_worker_dies() -> None:
    closed = asyncio.Event()
    sent = 0

    async def items() -> AsyncIterator[int]:
        nonlocal sent
        try:
            while True:  # as fast as credit allows: the caller ends up waiting for credit
                sent += 1
                yield sent
        finally:
            closed.set()

    async def window_full() -> None:
        """Until the count stops moving: the window is full, the sender waits for credit."""
        last, deadline = -1, time.monotonic() + 10.0
        while last != sent:
            assert time.monotonic() < deadline, "the stream never waited for credit"
            last = sent
            await asyncio.sleep(0.1)

    w = await Odd.spawn(None, redirect_stderr=rp.DevNull())
    try:
        # The caller holds its generator (as a program that made it does), so only an
        # explicit aclose() by the library closes it, not the garbage collector by chance.
        stream = items()
        call = asyncio.ensure_future(w.run(Odd.stall, stream))
        await poll(lambda: sent > 1000, 10.0, "the stream to flow")
        await window_full()
        os.kill(w.pid, signal.SIGKILL)
        with pytest.raises(rp.WorkerDied):
            await bounded(call, 10.0, "the reverse pipe on a killed worker")
        await bounded(closed.wait(), 5.0, "the caller's generator to be closed")
        del stream
    finally:
        await w.close()
