"""Failures: heartbeat loss, closing with calls in flight, message size limits, menu mismatches,
and one very large message."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from . import layer as rpc
from .peer import PRODUCER
from .support import (
    SECRET,
    TIMEOUT,
    Pair,
    RawPeer,
    S,
    Subprocess,
    menu_entry,
    serving,
    tcp_address,
    wait_for,
)

FAST_HEARTBEATS = rpc.RpcSettings(heartbeat_interval=0.1, heartbeat_timeout=0.5)


async def endless_numbers() -> AsyncIterator[int]:
    i = 0
    while True:
        yield i
        i += 1


async def all_fail(
    calls: Sequence[Awaitable[Any]], bound: float = TIMEOUT
) -> list[BaseException]:
    """Wait (at most ``bound`` seconds) for every call to fail; return the errors."""
    results = await asyncio.wait_for(
        asyncio.gather(*calls, return_exceptions=True), bound
    )
    errors: list[BaseException] = []
    for result in results:
        assert isinstance(result, BaseException), f"a call succeeded: {result!r}"
        errors.append(result)
    return errors


# ---------------------------------------------------------------------- heartbeats


async def test_silent_peer_is_detected_and_calls_in_flight_fail() -> None:
    """A peer that completes the handshake, then neither reads nor sends."""
    connected: list[rpc.Connection] = []
    got_one = asyncio.Event()

    def on_connection(connection: rpc.Connection) -> None:
        connected.append(connection)
        got_one.set()

    server = await rpc.serve_tcp(secret=SECRET, settings=FAST_HEARTBEATS,
                                 on_connection=on_connection)
    async with server:
        peer = await RawPeer.open(server.address)
        # The raw peer claims to serve functions, so the server can call it.
        specs = [S.hang, S.endless, S.counter, S.total, S.note]
        await peer.handshake(menu=[menu_entry(s) for s in specs])
        await wait_for(got_one.wait())
        connection = connected[0]
        start = time.monotonic()
        reader = await connection.pipe(S.endless, "x")
        calls: list[Awaitable[Any]] = [
            connection.call(S.hang, "x"),
            anext(reader),
            connection.state(S.counter, 1, 2),
            connection.reverse_pipe(S.total, 1, endless_numbers()),
        ]
        await connection.one_way(S.note, 1)
        errors = await all_fail(calls)
        elapsed = time.monotonic() - start
        for error in errors:
            assert isinstance(error, rpc.ConnectionClosed), repr(error)
            assert "heartbeat timeout" in str(error)
        assert 0.5 <= elapsed < 5.0, elapsed
        assert (await connection.wait_closed()).startswith("heartbeat timeout: nothing heard")
        with pytest.raises(rpc.ConnectionClosed, match="heartbeat timeout"):
            await connection.call(S.hang, "after")
        peer.close()


async def test_stopped_process_is_detected() -> None:
    """SIGSTOP a real server process: the client's calls in flight fail within the bound."""
    peer = await Subprocess.start("serve", FAST_HEARTBEATS.to_json())
    stopped = False
    try:
        _, host, port = (await peer.line()).split()
        client = await rpc.connect_tcp(host, int(port), secret=SECRET, settings=FAST_HEARTBEATS)
        # A CPU-bound thread call longer than heartbeat_timeout does not kill the connection.
        assert await wait_for(client.call(PRODUCER["spin"], 1.2)) > 0
        assert not client.is_closed
        reader = await client.pipe(PRODUCER["stalled"])
        assert await anext(reader) == 0
        calls: list[Awaitable[Any]] = [
            client.call(PRODUCER["hang"], "x"),
            anext(reader),
            client.call(PRODUCER["echo"], b"x" * 1000),
        ]
        # The echo may or may not have been answered yet: stop the peer now.
        os.kill(peer.pid, signal.SIGSTOP)
        stopped = True
        start = time.monotonic()
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), TIMEOUT)
        elapsed = time.monotonic() - start
        assert isinstance(results[0], rpc.ConnectionClosed), results[0]
        assert isinstance(results[1], rpc.ConnectionClosed), results[1]
        assert "heartbeat timeout" in str(results[0])
        assert elapsed < 5.0
        with pytest.raises(rpc.ConnectionClosed, match="heartbeat timeout"):
            await client.call(PRODUCER["echo"], b"")
        assert "heartbeat timeout" in await wait_for(client.wait_closed())
    finally:
        if stopped:
            os.kill(peer.pid, signal.SIGCONT)
        await peer.stop()


# ---------------------------------------------------------------------- closing


async def start_every_kind(pair: Pair) -> list[asyncio.Future[Any]]:
    """One call of each kind in flight, each kept waiting by the server (which has started
    serving every one of them when this returns)."""
    client = pair.client
    stalled = await client.pipe(S.stalled, "pipe")
    assert await anext(stalled) == 0
    initial, updates = await client.state(S.state_stalled, "updates")
    assert initial == "ready" and await anext(updates) == 0
    await client.one_way(S.note_hang, "one_way")
    calls = [
        client.call(S.hang, "rpc"),
        anext(stalled),
        client.state(S.state_hang, "state"),
        anext(updates),
        client.reverse_pipe(S.swallow_hang, "reverse", endless_numbers()),
        client.reverse_pipe(S.total, 1, endless_numbers()),
    ]
    tasks: list[asyncio.Future[Any]] = [asyncio.ensure_future(call) for call in calls]
    for tag in ("rpc", "state", "reverse", "one_way"):
        await wait_for(pair.service.events[f"{tag}:started"].wait())
    return tasks


SERVER_TAGS = [
    "rpc:cancelled", "pipe:finally", "state:finally", "updates:finally", "reverse:finally",
    "one_way:finally",
]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_close_fails_every_call_in_flight(transport: str) -> None:
    # The server runs a one-way call that arrived before the close for up to its
    # heartbeat_timeout, then cancels it: keep that short here.
    server_settings = rpc.RpcSettings(heartbeat_interval=0.2, heartbeat_timeout=1.0)
    async with serving(transport, settings=server_settings) as pair:
        client = pair.client
        events = pair.service.events
        tasks = await start_every_kind(pair)
        client.close("the test is done")
        errors = await all_fail(tasks, bound=1.0)
        for error in errors:
            assert isinstance(error, rpc.ConnectionClosed), repr(error)
            assert error.reason == "the test is done"
        assert await wait_for(client.wait_closed()) == "the test is done"
        assert client.close_reason == "the test is done"
        # The peer sees why, and its serving tasks were all stopped.
        served = pair.served[0]
        assert await wait_for(served.wait_closed()) == "closed by the peer: the test is done"
        for tag in SERVER_TAGS:
            assert events[tag].is_set(), tag
        # Nothing new starts on a closed connection.
        for start in (
            lambda: client.call(S.add, 1),
            lambda: client.pipe(S.count, 1),
            lambda: client.state(S.counter, 1, 1),
            lambda: client.one_way(S.note, 1),
            lambda: client.reverse_pipe(S.total, 1, []),
        ):
            with pytest.raises(rpc.ConnectionClosed, match="the test is done"):
                await start()


async def test_peer_close_fails_every_call_in_flight() -> None:
    async with serving("tcp") as pair:
        tasks = await start_every_kind(pair)
        pair.served[0].close("the server is going away")
        errors = await all_fail(tasks, bound=1.0)
        for error in errors:
            assert isinstance(error, rpc.ConnectionClosed), repr(error)
            assert error.reason == "closed by the peer: the server is going away"
        assert await wait_for(pair.client.wait_closed()) == (
            "closed by the peer: the server is going away"
        )
        assert await wait_for(pair.served[0].wait_closed()) == "the server is going away"
        for tag in SERVER_TAGS:
            assert pair.service.events[tag].is_set(), tag


async def test_server_close_closes_its_connections() -> None:
    async with serving("unix") as pair:
        task = asyncio.ensure_future(pair.client.call(S.hang, "x"))
        await wait_for(pair.service.events["x:started"].wait())
        pair.server.close()
        with pytest.raises(rpc.ConnectionClosed, match="closed by the peer: server closed"):
            await wait_for(task)
        await wait_for(pair.server.wait_closed())
        assert pair.service.events["x:cancelled"].is_set()


async def test_abrupt_loss_fails_calls() -> None:
    """The peer's socket disappears without a CLOSE (as when a process is killed)."""
    async with serving("tcp") as pair:
        task = asyncio.ensure_future(pair.client.call(S.hang, "x"))
        await wait_for(pair.service.events["x:started"].wait())
        transport = pair.served[0]._transport
        assert transport is not None
        transport.abort()
        with pytest.raises(rpc.ConnectionClosed, match="connection lost"):
            await wait_for(task)


async def test_close_is_idempotent_and_wait_closed_repeats() -> None:
    async with serving("tcp") as pair:
        pair.client.close("first")
        pair.client.close("second")
        assert await wait_for(pair.client.wait_closed()) == "first"
        assert await wait_for(pair.client.wait_closed()) == "first"


# ---------------------------------------------------------------------- message size

SMALL = rpc.RpcSettings(max_message_size=64 * 1024)


async def test_sender_refuses_oversized_messages_before_sending() -> None:
    # Both sides have the small limit: had anything oversized been sent, the receiver would
    # have closed the connection.
    async with serving("tcp", settings=SMALL, client_settings=SMALL) as pair:
        c = pair.client
        with pytest.raises(rpc.MessageTooLarge, match=r"echo: arguments: .*exceeds max_message"):
            await c.call(S.echo, bytes(100_000))
        with pytest.raises(rpc.MessageTooLarge, match="echo"):
            c.call_future(S.echo, bytes(100_000))
        with pytest.raises(rpc.MessageTooLarge, match="fail_one_way: arguments"):
            await c.one_way(S.fail_one_way, "x" * 100_000)
        with pytest.raises(rpc.MessageTooLarge, match="swallow_bytes: a stream item"):
            await c.reverse_pipe(S.swallow_bytes, [b"ok", bytes(100_000)])
        # Results and stream items are refused by the sending server, and the call fails.
        with pytest.raises(rpc.ProtocolError, match="blob: the result cannot be sent"):
            await c.call(S.blob, 100_000)
        reader = await c.pipe(S.blobs, 100_000)
        assert await anext(reader) == b""
        with pytest.raises(rpc.ProtocolError, match="blobs: a stream item cannot be sent"):
            await anext(reader)
        # Just under the limit is fine.
        assert len(await c.call(S.echo, bytes(64 * 1024 - 100))) == 64 * 1024 - 100
        assert not c.is_closed
        assert not pair.served[0].is_closed


async def test_receiver_refuses_oversized_frames() -> None:
    big = rpc.RpcSettings(max_message_size=1024 * 1024)
    async with serving("tcp", settings=SMALL, client_settings=big) as pair:
        task = asyncio.ensure_future(pair.client.call(S.hang, "x"))
        with pytest.raises(rpc.ConnectionClosed, match="exceeds max_message_size") as info:
            await wait_for(pair.client.call(S.echo, bytes(100_000)))
        assert info.value.reason.startswith("closed by the peer: a frame of ")
        assert info.value.reason.endswith("exceeds max_message_size (65536 bytes)")
        with pytest.raises(rpc.ConnectionClosed):
            await wait_for(task)
        reason = await wait_for(pair.served[0].wait_closed())
        assert reason.startswith("a frame of ") and "(65536 bytes)" in reason


async def test_256_mib_echo() -> None:
    """A value of max_message_size bytes (the default, 256 MiB) goes through, both ways."""
    peer = await Subprocess.start("serve")
    try:
        _, host, port = (await peer.line()).split()
        client = await rpc.connect_tcp(host, int(port), secret=SECRET)
        data = bytes(rpc.RpcSettings().max_message_size)
        result = await asyncio.wait_for(client.call(PRODUCER["echo"], data), 30)
        assert len(result) == len(data)
        assert result == data
        del result
        with pytest.raises(rpc.MessageTooLarge):
            await client.call(PRODUCER["echo"], data + bytes(100))
        del data
        client.close()
        await client.wait_closed()
    finally:
        await peer.stop()


# ---------------------------------------------------------------------- menus


async def test_menu_mismatches_are_named() -> None:
    async with serving("tcp") as pair:
        c = pair.client
        missing = rpc.FunctionSpec("missing", kind="rpc", response=int)
        newer = rpc.FunctionSpec(
            "add", kind="rpc", version=2, parameters=[("x", int), ("y", int)], response=int
        )
        retyped = rpc.FunctionSpec(
            "add", kind="rpc", parameters=[("x", str), ("y", int)], response=int
        )
        other_kind = rpc.FunctionSpec("add", kind="pipe", parameters=[("x", int)], item=int)
        with pytest.raises(rpc.ProtocolError, match="missing: the peer does not serve"):
            await c.call(missing)
        with pytest.raises(rpc.ProtocolError,
                           match="add: version 2 here, version 1 on the peer"):
            await c.call(newer, 1, 2)
        with pytest.raises(rpc.ProtocolError) as info:
            await c.call(retyped, "1", 2)
        assert str(info.value) == (
            "add: types differ: here rpc (x: str, y: int) -> int; "
            "on the peer rpc (x: int, y: int) -> int"
        )
        with pytest.raises(rpc.ProtocolError, match="add: a pipe here, a rpc on the peer"):
            await c.pipe(other_kind, 1)
        # Every call kind checks the menu.
        starts: list[tuple[rpc.Kind, Callable[[rpc.FunctionSpec], Awaitable[Any]]]] = [
            ("pipe", lambda s: c.pipe(s)),
            ("state", lambda s: c.state(s)),
            ("one_way", lambda s: c.one_way(s)),
            ("reverse_pipe", lambda s: c.reverse_pipe(s, [])),
        ]
        for kind, start in starts:
            spec = rpc.FunctionSpec(f"missing_{kind}", kind=kind, item=int)
            with pytest.raises(rpc.ProtocolError, match=f"missing_{kind}: the peer does not"):
                await start(spec)
        # check_menu names every problem at once, and nothing that matches.
        with pytest.raises(rpc.ProtocolError) as info:
            c.check_menu([S.add, missing, newer, retyped, S.count])
        lines = str(info.value).splitlines()
        assert lines[0] == "the peer's functions differ:"
        assert len(lines) == 4
        assert "missing" in lines[1] and "version 2" in lines[2] and "types differ" in lines[3]
        c.check_menu([S.add, S.count, S.total])
        assert c.peer_menu["add"].signature == "rpc (x: int, y: int) -> int"
        # None of this hurt the connection.
        assert await c.call(S.add, 1) == 2


async def test_call_before_ready_is_refused() -> None:
    loop = asyncio.get_running_loop()
    async with serving("tcp") as pair:
        _, connection = await loop.create_connection(
            lambda: rpc.Connection(secret=SECRET, is_client=True),
            *tcp_address(pair.server),
        )
        with pytest.raises(rpc.ProtocolError, match="not ready"):
            await connection.call(S.add, 1)
        await wait_for(connection.wait_ready())
        assert await connection.call(S.add, 1) == 2
        connection.close()
        await wait_for(connection.wait_closed())


async def test_handshake_timeout_on_the_client() -> None:
    """A server that accepts but never speaks: connect fails within handshake_timeout."""
    accepted = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        start = time.monotonic()
        with pytest.raises(rpc.HandshakeError, match="handshake timeout"):
            await wait_for(rpc.connect_tcp(
                host, port, secret=SECRET, settings=rpc.RpcSettings(handshake_timeout=0.3)
            ))
        assert time.monotonic() - start < 2.0
        assert accepted.is_set()
