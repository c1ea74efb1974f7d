"""Every call kind over real TCP and Unix sockets."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from rpc_parallel.rpc.connection import ONE_WAY_WINDOW

from . import layer as rpc
from .support import SECRET, S, Service, serving, tcp_address, wait_for

pytestmark = pytest.mark.parametrize("transport", ["tcp", "unix"])


async def test_rpc_results_and_kwargs_defaults(transport: str) -> None:
    async with serving(transport) as pair:
        c = pair.client
        assert await c.call(S.add, 1) == 2
        assert await c.call(S.add, 1, 5) == 6
        assert await c.call(S.add, 1, y=5) == 6
        assert await c.call(S.add, x=2, y=3) == 5
        assert await c.call(S.add, y=10, x=1) == 11
        assert await c.call_future(S.add, 3, 4) == 7
        with pytest.raises(TypeError, match="add"):
            await c.call(S.add)
        with pytest.raises(TypeError, match="add"):
            await c.call(S.add, 1, z=2)
        with pytest.raises(TypeError, match="add"):
            await c.call(S.add, 1, 2, 3)
        assert await c.call(S.echo, b"\x00abc") == b"\x00abc"
        # Wrong kind of call for a spec.
        with pytest.raises(TypeError, match="count is a pipe"):
            await c.call(S.count, 3)
        with pytest.raises(TypeError, match="add is a rpc"):
            await c.pipe(S.add, 3)


async def test_remote_error_carries_type_message_traceback(transport: str) -> None:
    async with serving(transport) as pair:
        with pytest.raises(rpc.RemoteError) as info:
            await pair.client.call(S.boom, "it broke")
        error = info.value
        assert error.function == "boom"
        assert error.remote_type == "ValueError"
        assert error.remote_message == "it broke"
        assert "raise ValueError(message)" in error.remote_traceback
        assert "boom raised ValueError: it broke" in str(error)
        # The server keeps serving.
        assert await pair.client.call(S.add, 1) == 2


async def test_plain_def_runs_in_a_thread(transport: str) -> None:
    async with serving(transport) as pair:
        results = await asyncio.gather(*(pair.client.call(S.double, i) for i in range(20)))
        assert results == [2 * i for i in range(20)]


async def test_many_calls_in_flight_complete_out_of_order(transport: str) -> None:
    async with serving(transport) as pair:
        n = 50
        tasks = {i: asyncio.create_task(pair.client.call(S.gated, i)) for i in range(n)}
        order = list(range(n))
        random.Random(7).shuffle(order)
        finished: list[int] = []
        for i in order:
            pair.service.gates[i].set()
            finished.append(await wait_for(tasks[i]))
            # Nothing released later has completed.
            assert all(not tasks[j].done() for j in order[len(finished):])
        assert finished == order
        # Fast-path futures too, alongside tasks of other kinds.
        futures = [pair.client.call_future(S.add, i, i) for i in range(1000)]
        assert await wait_for(asyncio.gather(*futures)) == [2 * i for i in range(1000)]


async def test_the_answers_of_cancelled_futures_are_dropped(transport: str) -> None:
    """A ``call_future`` its caller cancelled (no ``abandon``): its answer still arrives,
    is dropped without an error, and the calls around it complete."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        async with serving(transport) as pair:
            c = pair.client
            futures = [c.call_future(S.add, i, i) for i in range(200)]
            for future in futures[::2]:
                future.cancel()
            results = await wait_for(asyncio.gather(*futures[1::2]))
            assert results == [2 * i for i in range(1, 200, 2)]
            assert all(future.cancelled() for future in futures[::2])
            assert await c.call(S.add, 1) == 2
            assert not c.is_closed
    finally:
        loop.set_exception_handler(None)
    assert errors == []


async def test_cancelling_an_rpc_cancels_the_server_task(transport: str) -> None:
    async with serving(transport) as pair:
        events = pair.service.events
        task = asyncio.create_task(pair.client.call(S.hang, "h"))
        await wait_for(events["h:started"].wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(events["h:cancelled"].wait())
        # The connection is unharmed.
        assert await pair.client.call(S.add, 1) == 2


async def test_pipe(transport: str) -> None:
    async with serving(transport) as pair:
        reader = await pair.client.pipe(S.count, 5)
        assert [x async for x in reader] == [0, 1, 2, 3, 4]
        reader = await pair.client.pipe(S.count, n=0)
        assert [x async for x in reader] == []
        # A plain generator runs in a thread, one item at a time.
        reader = await pair.client.pipe(S.count_in_thread, 300)
        assert [x async for x in reader] == list(range(300))
        # Several pipes at once, interleaved.
        readers = [await pair.client.pipe(S.count, 100 + i) for i in range(5)]

        async def collect(reader: rpc.PipeReader[int]) -> list[int]:
            return [x async for x in reader]

        results = await asyncio.gather(*(collect(r) for r in readers))
        assert results == [list(range(100 + i)) for i in range(5)]


async def test_pipe_abort_closes_the_generator(transport: str) -> None:
    async with serving(transport) as pair:
        events = pair.service.events
        reader = await pair.client.pipe(S.endless, "e")
        got = [await anext(reader) for _ in range(10)]
        assert got == list(range(10))
        await reader.aclose()
        await wait_for(events["e:finally"].wait())
        with pytest.raises(StopAsyncIteration):
            await anext(reader)
        # Abort of a generator waiting on something else than credit.
        reader = await pair.client.pipe(S.stalled, "s")
        assert await anext(reader) == 0
        await wait_for(events["s:started"].wait())
        async with reader:
            pass
        await wait_for(events["s:finally"].wait())
        # Cancelling the consumer and closing the reader also stops the generator.
        reader = await pair.client.pipe(S.endless, "c")
        consumer = asyncio.create_task(anext(reader))
        await wait_for(consumer)
        await reader.aclose()
        await wait_for(events["c:finally"].wait())
        assert await pair.client.call(S.add, 1) == 2


async def test_state_initial_and_updates(transport: str) -> None:
    async with serving(transport) as pair:
        initial, updates = await pair.client.state(S.counter, 10, 4)
        assert initial == "from 10"
        assert [x async for x in updates] == [10, 11, 12, 13]
        initial, updates = await pair.client.state(S.counter, start=0, n=0)
        assert initial == "from 0"
        assert [x async for x in updates] == []
        # Abort the updates early.
        initial, updates = await pair.client.state(S.state_stalled, "t")
        assert initial == "ready"
        assert await anext(updates) == 0
        await updates.aclose()
        await wait_for(pair.service.events["t:finally"].wait())
        # Cancelling while the initial state is awaited cancels the server side.
        task = asyncio.create_task(pair.client.state(S.state_hang, "i"))
        await wait_for(pair.service.events["i:started"].wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(pair.service.events["i:finally"].wait())


async def test_one_way_calls_sent_just_before_close_are_still_served(transport: str) -> None:
    async with serving(transport) as pair:
        for x in range(3):
            await pair.client.one_way(S.note, x)
        pair.client.close("done sending")  # CLOSE follows the calls in the same write
        await wait_for(pair.service.events["note:2"].wait())
        assert pair.service.log == [0, 1, 2]


async def test_one_way_calls_wait_at_the_window_until_acknowledged(transport: str) -> None:
    """#8.4: the caller sends at most ONE_WAY_WINDOW one-way calls that have not finished on
    the serving side; then ``one_way`` waits (and the connection's end releases it)."""
    window = ONE_WAY_WINDOW
    async with serving(transport) as pair:
        for x in range(3 * window):  # fast ones: acknowledged as they finish, never stuck
            await wait_for(pair.client.one_way(S.note, x))
        await wait_for(pair.service.events[f"note:{3 * window - 1}"].wait())
        for x in range(window):
            await wait_for(pair.client.one_way(S.note_hang, f"h{x}"))
        await wait_for(pair.service.events[f"h{window - 1}:started"].wait())
        blocked = asyncio.ensure_future(pair.client.one_way(S.note_hang, "over"))
        done, _ = await asyncio.wait([blocked], timeout=0.5)
        assert not done, "a one-way call beyond the window was sent"
        assert not pair.service.events["over:started"].is_set()
        pair.served[0].close("enough")  # (from the serving side: the hung calls end now)
        with pytest.raises(rpc.ConnectionClosed):
            await wait_for(blocked)
        await wait_for(pair.service.events[f"h{window - 1}:finally"].wait())


async def test_one_way_and_its_errors(transport: str) -> None:
    async with serving(transport) as pair:
        for x in range(5):
            await pair.client.one_way(S.note, x)
        await wait_for(pair.service.events["note:4"].wait())
        assert pair.service.log == [0, 1, 2, 3, 4]
        # An error goes to on_one_way_error on the serving side, never to the caller.
        await pair.client.one_way(S.fail_one_way, "lost")
        await wait_for(pair.one_way_error.wait())
        spec, error = pair.one_way_errors[0]
        assert spec.name == "fail_one_way"
        assert isinstance(error, ValueError) and str(error) == "lost"
        # So is a one-way call whose arguments have the wrong type.
        pair.one_way_error.clear()
        await pair.client.one_way(S.note, "not an int")
        await wait_for(pair.one_way_error.wait())
        spec, error = pair.one_way_errors[1]
        assert spec.name == "note"
        assert isinstance(error, rpc.ProtocolError)
        assert "argument 'x'" in str(error) and "expected int" in str(error)
        assert await pair.client.call(S.add, 1) == 2


async def test_one_way_errors_without_handler_go_to_the_loop(transport: str) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    reported_event = asyncio.Event()

    def handler(_: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        reported.append(context)
        reported_event.set()

    loop.set_exception_handler(handler)
    service = Service()
    server = await rpc.serve_tcp(
        secret=SECRET, implementations=[rpc.Implementation(S.fail_one_way, service.fail_one_way)]
    )
    async with server:
        client = await rpc.connect_tcp(*tcp_address(server), secret=SECRET)
        await client.one_way(S.fail_one_way, "unhandled")
        await wait_for(reported_event.wait())
        assert "fail_one_way" in str(reported[0]["message"])
        assert str(reported[0]["exception"]) == "unhandled"
        client.close()
        await client.wait_closed()


async def test_reverse_pipe(transport: str) -> None:
    async with serving(transport) as pair:
        c = pair.client

        async def numbers(n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i

        assert await c.reverse_pipe(S.total, 2, numbers(100)) == 2 * sum(range(100))
        assert await c.reverse_pipe(S.total, 1, [1, 2, 3]) == 6
        assert await c.reverse_pipe(S.total, k=3, stream=iter(range(4))) == 18
        assert await c.reverse_pipe(S.total, 1, numbers(0)) == 0


async def test_reverse_pipe_server_returns_early(transport: str) -> None:
    async with serving(transport) as pair:
        sent = 0
        closed = asyncio.Event()

        async def endless() -> AsyncGenerator[int, None]:
            nonlocal sent
            try:
                while True:
                    yield sent
                    sent += 1
            finally:
                closed.set()

        stream = endless()
        assert await wait_for(pair.client.reverse_pipe(S.take, 5, stream)) == sum(range(5))
        # The sender stopped: it sent at most a window's worth after the server returned.
        before = sent
        assert await pair.client.call(S.add, 1) == 2
        assert sent == before
        await stream.aclose()
        assert closed.is_set()
        # A plain iterable that the server stops reading.
        assert await wait_for(pair.client.reverse_pipe(S.take, 3, range(10**9))) == 3


async def test_reverse_pipe_caller_stream_fails(transport: str) -> None:
    async with serving(transport) as pair:

        async def broken() -> AsyncIterator[int]:
            yield 1
            raise KeyError("the caller's stream broke")

        with pytest.raises(KeyError, match="the caller's stream broke"):
            await wait_for(pair.client.reverse_pipe(S.total, 1, broken()))
        assert await pair.client.call(S.add, 1) == 2


async def test_reverse_pipe_cancel_stops_server(transport: str) -> None:
    async with serving(transport) as pair:
        task = asyncio.create_task(pair.client.reverse_pipe(S.swallow_hang, "r", range(10)))
        await wait_for(pair.service.events["r:started"].wait())
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_for(pair.service.events["r:finally"].wait())
        assert await pair.client.call(S.add, 1) == 2


async def test_heartbeats_flow_while_a_thread_computes(transport: str) -> None:
    settings = rpc.RpcSettings(heartbeat_interval=0.1, heartbeat_timeout=0.5)
    async with serving(transport, settings=settings, client_settings=settings) as pair:
        # CPU-bound for much longer than heartbeat_timeout, in the server's thread pool.
        turns = await wait_for(pair.client.call(S.spin, 1.5))
        assert turns > 0
        assert not pair.client.is_closed
        assert await pair.client.call(S.add, 1) == 2


async def test_both_sides_serve(transport: str) -> None:
    """The client may serve functions too; a server implementation calls back its caller."""
    service = Service()

    async def ask_back(x: int) -> int:
        return await rpc.current_connection.get().call(S.double, x) + 1  # type: ignore[no-any-return]

    ask = rpc.FunctionSpec.from_callable(ask_back, kind="rpc", name="ask_back")
    server = await rpc.serve_tcp(secret=SECRET, implementations=[rpc.Implementation(ask, ask_back)])
    async with server:
        client = await rpc.connect_tcp(
            *tcp_address(server),
            secret=SECRET,
            implementations=[rpc.Implementation(S.double, service.double)],
        )
        assert await client.call(ask, 20) == 41
        client.close()
        assert await client.wait_closed() == "closed by this side"


async def test_unix_socket_is_owner_only(transport: str) -> None:
    import os
    import stat

    if transport != "unix":
        pytest.skip("unix sockets only")
    async with serving(transport) as pair:
        assert isinstance(pair.server.address, str)
        mode = stat.S_IMODE(os.stat(pair.server.address).st_mode)
        assert mode & 0o077 == 0
    with pytest.raises(FileNotFoundError):
        os.stat(pair.server.address)

