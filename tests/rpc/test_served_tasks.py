"""What a served ``async def`` sees while it runs: a task, a context of its own, no stray
exception being handled; the same whether its first step runs inline as the frame is read
(many calls in one read) or after a wait. Real Unix and TCP sockets."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from . import layer as rpc
from .support import SECRET, tcp_address, wait_for

pytestmark = pytest.mark.parametrize("transport", ["tcp", "unix"])

TAG: contextvars.ContextVar[int] = contextvars.ContextVar("test_served_tasks_tag", default=-1)


async def observe(tag: int) -> tuple[bool, int, bool, bool]:
    """Whether a task is current, the tag this call's context had before it set its own,
    whether no exception is being handled, whether it is this connection's call."""
    task = asyncio.current_task()
    before = TAG.get()
    TAG.set(tag)
    connection = rpc.current_connection.get(None)
    return task is not None, before, sys.exc_info()[1] is None, connection is not None


async def fail(tag: int) -> int:
    TAG.set(tag)
    raise ValueError(f"failure {tag}")


async def wait_then_observe(tag: int) -> tuple[bool, int, bool]:
    """Sets its tag, waits a loop iteration, then reports whether its task and its tag
    are still the same."""
    task = asyncio.current_task()
    TAG.set(tag)
    await asyncio.sleep(0)
    await asyncio.sleep(0.001)
    return asyncio.current_task() is task and task is not None, TAG.get(), TAG.get() == tag


def in_thread(tag: int) -> tuple[bool, int]:
    """A plain function: whether it runs in a thread other than the loop's, and the tag its
    context had before it set its own."""
    before = TAG.get()
    TAG.set(tag)
    return threading.current_thread() is not threading.main_thread(), before


OBSERVE = rpc.FunctionSpec.from_callable(observe, kind="rpc", name="observe")
THREAD = rpc.FunctionSpec.from_callable(in_thread, kind="rpc", name="in_thread")
FAIL = rpc.FunctionSpec.from_callable(fail, kind="rpc", name="fail")
WAIT = rpc.FunctionSpec.from_callable(wait_then_observe, kind="rpc", name="wait_then_observe")
SERVED = [
    rpc.Implementation(OBSERVE, observe),
    rpc.Implementation(FAIL, fail),
    rpc.Implementation(WAIT, wait_then_observe),
    rpc.Implementation(THREAD, in_thread),
]


@asynccontextmanager
async def connected(transport: str) -> AsyncIterator[rpc.Connection]:
    with tempfile.TemporaryDirectory(prefix="rpc", dir="/tmp") as directory:
        if transport == "tcp":
            server = await rpc.serve_tcp(secret=SECRET, implementations=SERVED)
            client = await rpc.connect_tcp(*tcp_address(server), secret=SECRET)
        else:
            path = f"{directory}/s"
            server = await rpc.serve_unix(path, secret=SECRET, implementations=SERVED)
            client = await rpc.connect_unix(path, secret=SECRET)
        try:
            yield client
        finally:
            client.close()
            await wait_for(client.wait_closed())
            server.close()
            await wait_for(server.wait_closed())


async def test_calls_in_one_read_each_see_a_task_and_a_context_of_their_own(
    transport: str,
) -> None:
    async with connected(transport) as client:
        for _ in range(5):
            futures = [client.call_future(OBSERVE, i) for i in range(256)]
            for has_task, before, no_exception, has_connection in await wait_for(
                asyncio.gather(*futures)
            ):
                assert has_task
                assert before == -1  # No call's tag leaked into the next call's context.
                assert no_exception
                assert has_connection


async def test_failures_do_not_leak_into_the_next_call(transport: str) -> None:
    async with connected(transport) as client:
        futures = [client.call_future(FAIL if i % 2 else OBSERVE, i) for i in range(200)]
        results = await wait_for(asyncio.gather(*futures, return_exceptions=True))
        for i, result in enumerate(results):
            if i % 2:
                assert isinstance(result, rpc.RemoteError)
                assert result.remote_message == f"failure {i}"
            else:
                # Not inside the previous call's error; not seeing its tag.
                assert result == (True, -1, True, True)


async def test_calls_that_wait_keep_their_task_and_context(transport: str) -> None:
    async with connected(transport) as client:
        futures = [
            client.call_future(WAIT if i % 3 == 0 else OBSERVE, i) for i in range(300)
        ]
        results = await wait_for(asyncio.gather(*futures))
        for i, result in enumerate(results):
            if i % 3 == 0:
                assert result == (True, i, True)
            else:
                assert result == (True, -1, True, True)
        # After all that, calls inline again, and the loop has no task stuck as current.
        assert await client.call(OBSERVE, 7) == (True, -1, True, True)
        assert asyncio.current_task() is not None


async def test_a_read_with_calls_of_every_sort_answers_each(transport: str) -> None:
    """One read holding calls served inline, calls to a plain function (in a thread), calls
    whose arguments do not decode and calls that wait: each gets its own answer and its own
    context, and those served on the loop see a task."""
    async with connected(transport) as client:
        for _ in range(3):
            # An idle runner first (so the read is served inline until a call waits; the
            # calls after that are queued for a new one).
            assert await client.call(OBSERVE, -2) == (True, -1, True, True)
            futures = []
            for i in range(241):
                sort = i % 4
                if sort == 0:
                    futures.append(client.call_future(OBSERVE, i))
                elif sort == 1:
                    futures.append(client.call_future(THREAD, i))
                elif sort == 2:
                    futures.append(client.call_future(OBSERVE, "not an int"))
                else:
                    futures.append(client.call_future(WAIT, i))
            results = await wait_for(asyncio.gather(*futures, return_exceptions=True))
            for i, result in enumerate(results):
                sort = i % 4
                if sort == 0:
                    assert result == (True, -1, True, True)
                elif sort == 1:
                    assert result == (True, -1)
                elif sort == 2:
                    assert isinstance(result, rpc.ProtocolError)
                    assert "observe" in str(result)
                else:
                    assert result == (True, i, True)
        assert await client.call(OBSERVE, 7) == (True, -1, True, True)
