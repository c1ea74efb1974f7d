"""#8.1: an error, result or stream item that cannot be encoded as is must still arrive (as a
safe substitute: escaped, truncated) and never hang the caller or kill the worker silently.

Every path x every odd error, each bounded by ``asyncio.wait_for`` so a hang is a failure.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

import rpc_parallel as rp

from ..workers.support import alive, bounded, gone
from ..workers.workers import Failures
from .workers import HUGE, ODD_KINDS, Odd

BOUND = 4.0
"""A correct answer takes milliseconds; a hang is cut off here (the suite's time budget)."""
TYPE_NAMES = {"surrogate": "ValueError", "str_raises": "BadStr", "huge": "ValueError"}

# Which (path, kind) fail today, with what happens; each is a strict xfail.
HANG = "the caller waits forever (heartbeats keep the link alive)"
EXIT_1 = "the worker exits with code 1"
LOST = "on_failure is never called and the worker never exits"
BROKEN: dict[tuple[str, str], str] = {
    **{("rpc_after_await", kind): HANG for kind in ODD_KINDS},
    **{("rpc_before_await", kind): EXIT_1 for kind in ODD_KINDS},
    ("plain_rpc", "surrogate"): HANG,
    ("plain_rpc", "str_raises"): EXIT_1,
    ("plain_rpc", "huge"): EXIT_1,
    **{("pipe", kind): HANG for kind in ODD_KINDS},
    **{("reverse_pipe", kind): HANG for kind in ODD_KINDS},
    ("one_way", "surrogate"): LOST,
    ("one_way", "str_raises"): "on_failure gets the RuntimeError of __str__, not BadStr",
    ("one_way", "huge"): "the report is lost: on_failure says only 'exited with code 1'",
    ("background", "surrogate"): LOST,
    ("background", "str_raises"): "on_failure gets the RuntimeError of __str__, not BadStr",
    ("background", "huge"): "the report is lost: on_failure says only 'exited with code 1'",
}


def cases(paths: tuple[str, ...]) -> list[object]:
    out = []
    for path in paths:
        for kind in ODD_KINDS:
            reason = BROKEN.get((path, kind))
            marks = [pytest.mark.xfail(strict=True, reason=f"#8.1: {reason}")] if reason else []
            out.append(pytest.param(path, kind, marks=marks, id=f"{path}-{kind}"))
    return out


def check_substitute(error: rp.RemoteError, kind: str) -> None:
    """The error names the type, and its text is a safe form of the original."""
    assert TYPE_NAMES[kind] in error.remote_type, error.remote_type
    if kind == "surrogate":
        assert "caf" in error.remote_message and ".csv" in error.remote_message
        error.remote_message.encode("utf-8")  # the substitute is valid text
    if kind == "huge":
        assert len(error.remote_message) < HUGE, "the message was not truncated"
        assert error.remote_message.startswith("x" * 100)
    str(error)  # printable on the caller's side


async def forever() -> AsyncIterator[int]:
    while True:
        yield 1
        await asyncio.sleep(0.01)


async def call(w: rp.WorkerHandle[Odd], path: str, kind: str) -> object:
    if path == "rpc_after_await":
        return await w.run(Odd.rpc_after_await, kind)
    if path == "rpc_before_await":
        return await w.run(Odd.rpc_before_await, kind)
    if path == "plain_rpc":
        return await w.run(Odd.plain_rpc, kind)
    if path == "pipe":
        reader = await w.run(Odd.pipe_fails, kind)
        return [x async for x in reader]
    if path == "reverse_pipe":
        return await w.run(Odd.reverse_fails, kind, forever())
    raise AssertionError(path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("path", "kind"),
                         cases(("rpc_after_await", "rpc_before_await", "plain_rpc", "pipe",
                                "reverse_pipe")))
async def test_odd_error_reaches_the_caller(small_messages: object, path: str, kind: str) -> None:
    failures = Failures()
    async with await Odd.spawn(None, on_failure=failures, redirect_stderr=rp.DevNull()) as w:
        await w.run(Odd.ping)  # a warm connection
        with pytest.raises(rp.RemoteError) as caught:
            await asyncio.wait_for(call(w, path, kind), BOUND)
        check_substitute(caught.value, kind)
        # The worker is alive and serving: an error in a call is not fatal.
        assert await bounded(w.run(Odd.ping), BOUND, "a call after the odd error") == w.pid
    assert failures.items == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("path", "kind"), cases(("one_way", "background")))
async def test_odd_failure_reaches_on_failure(small_messages: object, path: str,
                                              kind: str) -> None:
    failures = Failures()
    async with await Odd.spawn(None, on_failure=failures, redirect_stderr=rp.DevNull()) as w:
        await w.run(Odd.ping)
        if path == "one_way":
            await w.run(Odd.one_way_fails, kind)
        else:
            await w.run(Odd.background_fails, kind)
        failure = await failures.first(BOUND + 2.0)
        assert TYPE_NAMES[kind] in failure.remote_type, failure
        if kind == "surrogate":
            assert "caf" in str(failure)
        if kind == "huge":
            assert len(str(failure)) < HUGE
        await gone(w.pid, BOUND)
    assert len(failures.items) == 1


RESULT_BROKEN: dict[str, str] = {}


def result_case(name: str) -> object:
    reason = RESULT_BROKEN.get(name)
    marks = [pytest.mark.xfail(strict=True, reason=f"#8.1: {reason}")] if reason else []
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("what", [result_case("surrogate_result"),
                                  result_case("surrogate_item"),
                                  result_case("huge_result")])
async def test_unencodable_result_or_item_is_an_error_not_a_hang(small_messages: object,
                                                                 what: str) -> None:
    async with await Odd.spawn(None, redirect_stderr=rp.DevNull()) as w:
        with pytest.raises(rp.Error) as caught:
            if what == "surrogate_result":
                await asyncio.wait_for(w.run(Odd.surrogate_result), BOUND)
            elif what == "huge_result":
                await asyncio.wait_for(w.run(Odd.huge_result), BOUND)
            else:
                reader = await w.run(Odd.surrogate_items)
                await asyncio.wait_for(reader.__anext__(), BOUND)
                await asyncio.wait_for(reader.__anext__(), BOUND)
        assert not isinstance(caught.value, rp.ConnectionClosed), caught.value
        assert "Odd." in str(caught.value)
        assert alive(w.pid)
        assert await bounded(w.run(Odd.ping), BOUND, "a call after") == w.pid
