"""Hostile peers against a live server: random, truncated, garbled and oversized frames, wrong
secrets. The server never crashes, closes each bad connection with a clear reason, keeps its
memory bounded and goes on serving good connections."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from rpc_parallel.rpc import frames
from rpc_parallel.rpc.settings import ENVELOPE

from . import layer as rpc
from .support import (
    SECRET,
    TIMEOUT,
    RawPeer,
    S,
    Service,
    encode,
    frame,
    implementations,
    menu_entry,
    rss,
    tcp_address,
    wait_for,
)

SAFE = ("add", "echo", "count", "note", "total", "counter", "boom")
"""What the fuzzed server serves: nothing that can block a thread or wait forever."""
SETTINGS = rpc.RpcSettings(
    max_message_size=1024 * 1024, handshake_timeout=1.0, heartbeat_interval=0.2,
    heartbeat_timeout=2.0,
)


@dataclass
class Target:
    server: rpc.Server
    service: Service
    loop_errors: list[dict[str, Any]] = field(default_factory=list)

    async def open(self) -> tuple[RawPeer, rpc.Connection]:
        """A raw peer, and the server's Connection for it (before any handshake)."""
        before = set(self.server.connections)
        peer = await RawPeer.open(self.server.address)
        await peer.read_hello()
        (connection,) = self.server.connections - before
        return peer, connection

    async def refused(self, data: bytes, *, eof: bool = False) -> tuple[str, str | None]:
        """Send ``data`` on a fresh connection; the server's close reason, and the reason
        the peer read in the server's CLOSE frame."""
        peer, connection = await self.open()
        peer.send(data)
        if eof:
            peer.writer.write_eof()
        return await peer.closed_by(connection)

    async def good_call(self) -> None:
        client = await rpc.connect_tcp(*tcp_address(self.server), secret=SECRET)
        assert await client.call(S.add, 1, 2) == 3
        assert await client.call(S.echo, b"x" * 200_000) == b"x" * 200_000
        client.close()
        await client.wait_closed()


@contextlib.asynccontextmanager
async def target() -> AsyncIterator[Target]:
    loop = asyncio.get_running_loop()
    service = Service()
    served = [i for i in implementations(service) if i.spec.name in SAFE]
    server = await rpc.serve_tcp(secret=SECRET, implementations=served, settings=SETTINGS)
    found = Target(server, service)
    loop.set_exception_handler(lambda _, context: found.loop_errors.append(context))
    async with server:
        yield found
        assert server.is_accepting
    assert found.loop_errors == [], found.loop_errors


def hello(magic: str = frames.MAGIC, version: int = frames.PROTOCOL_VERSION,
          nonce: bytes = b"n" * 32) -> bytes:
    return frame(frames.HELLO, payload=encode(frames.Hello(magic, version, nonce)))


async def test_http_request_is_closed_with_a_reason() -> None:
    async with target() as t:
        reason, told = await t.refused(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "before authentication exceeds the limit of 4096 bytes" in reason
        assert "not an rpc_parallel peer" in reason
        assert told == reason
        await t.good_call()


async def test_oversized_header_before_auth_is_refused_before_the_body() -> None:
    async with target() as t:
        # Only the header is sent: the server refuses without waiting for the 5000 bytes.
        reason, told = await t.refused(frames.HEADER.pack(5000, frames.HELLO, 0, 0))
        assert reason.startswith("a frame of 5000 bytes before authentication exceeds")
        assert told == reason
        reason, _ = await t.refused(frames.HEADER.pack(0xFFFF_FFFF, frames.QUERY, 1, 0))
        assert f"a frame of {0xFFFF_FFFF} bytes" in reason
        await t.good_call()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (hello(magic="http"), "wrong magic 'http'"),
        (hello(version=99), "the peer speaks protocol version 99"),
        (hello(nonce=b"short"), "malformed nonce"),
        (frame(frames.HELLO, payload=b"\xc1garbage"), "malformed HELLO"),
        (frame(frames.HELLO, payload=encode([1, 2])), "malformed HELLO"),
        # Invalid UTF-8 where a string belongs.
        (frame(frames.HELLO, payload=b"\x93\xa2\xff\xfe\x01\xc4\x20" + b"n" * 32),
         "malformed HELLO"),
        (frame(frames.CLOSE, payload=b"\xa2\xff\xfe"), "closed by the peer: (unreadable reason)"),
        (frame(frames.AUTH, payload=encode(b"x" * 32)), "AUTH out of order"),
        (frame(frames.MENU, payload=encode([])), "MENU out of order"),
        (frame(frames.QUERY, 1, 0, encode((1, 2))), "before the handshake finished"),
        # A run of them in one read (the serving side's loop for runs refuses them too).
        (frame(frames.QUERY, 1, 0, encode((1, 2))) + frame(frames.QUERY, 3, 0, encode((3,))),
         "before the handshake finished"),
        (hello() + hello(), "a second HELLO"),
        (hello() + frame(frames.AUTH, payload=b"\xc1"), "malformed AUTH"),
        (frames.HEADER.pack(3, 0, 0, 0), "malformed frame (length field 3)"),
        (frame(200), "unknown message type 200"),
        (frame(frames.CLOSE, payload=encode("go away")), "closed by the peer: go away"),
        (hello()[:10], "connection lost: the peer closed the connection"),
    ],
)
async def test_garbled_handshakes_are_closed_with_a_reason(data: bytes, expected: str) -> None:
    async with target() as t:
        reason, _ = await t.refused(data, eof=True)
        assert expected in reason
        await t.good_call()


async def test_wrong_secrets_never_reach_dispatch() -> None:
    async with target() as t:
        # A real client with the wrong secret.
        with pytest.raises(rpc.HandshakeError, match="authentication failed"):
            await rpc.connect_tcp(*tcp_address(t.server), secret=b"wrong")
        # A raw peer with a wrong proof, pipelining a call behind it.
        peer, connection = await t.open()
        peer.send(peer.hello_frame())
        got = await peer.read_frame()
        assert got is not None and got[0] == frames.AUTH
        note = [e.name for e in SAFE_MENU].index("note")
        peer.send(peer.auth_frame(b"wrong") + frame(frames.MENU, payload=encode([]))
                  + frame(frames.QUERY, 0, note, encode((1,))))
        reason, told = await peer.closed_by(connection)
        assert reason == "authentication failed: the peer does not hold this application's secret"
        assert told == reason
        # A peer that replays a proof for another nonce.
        peer, connection = await t.open()
        peer.send(peer.hello_frame())
        await peer.read_frame()
        peer.server_nonce = b"\x00" * 32
        peer.send(peer.auth_frame())
        reason, _ = await peer.closed_by(connection)
        assert reason.startswith("authentication failed")
        assert t.service.log == []
        await t.good_call()


SAFE_MENU = [menu_entry(spec) for name, spec in S.by_name.items() if name in SAFE]
"""The fuzzed server's menu, in its order."""


async def test_silent_peer_times_out_in_the_handshake() -> None:
    async with target() as t:
        peer, connection = await t.open()
        reason, told = await peer.closed_by(connection)
        assert reason == "handshake timeout: no complete handshake within 1 s"
        assert told == reason


async def test_bad_frames_after_authentication() -> None:
    async with target() as t:
        peer, connection = await t.open()
        await peer.handshake()
        add = peer.index_of("add")
        # A bad index and bad arguments fail the call, not the connection.
        peer.send_frame(frames.QUERY, 1, 999, encode((1,)))
        peer.send_frame(frames.QUERY, 3, add, b"\xc1\xc1")
        peer.send_frame(frames.QUERY, 5, add, encode(("x", 1)))
        peer.send_frame(frames.QUERY, 7, add, encode((1, 2, 3)))
        peer.send_frame(frames.QUERY, 9, add, encode((1, 2)))
        peer.send_frame(frames.QUERY, 13, peer.index_of("boom"), b"\x91\xa2\xff\xfe")
        # Frames for calls that do not exist are ignored.
        for message_type in (frames.RESPONSE, frames.ERROR, frames.ITEM, frames.END,
                             frames.ABORT, frames.CREDIT):
            peer.send_frame(message_type, 77, 5, encode("stray"))
        answers: dict[int, tuple[int, bytes]] = {}
        while len(answers) < 6:
            got = await peer.read_frame()
            assert got is not None
            if got[0] != frames.HEARTBEAT:
                answers[got[1]] = (got[0], got[3])
        errors = {
            call_id: frames.ERROR_DECODER.decode(payload).message
            for call_id, (message_type, payload) in answers.items()
            if message_type == frames.ERROR
        }
        assert "no function at index 999" in errors[1]
        assert "add: malformed arguments" in errors[3]
        assert "add: argument 'x': Expected `int`, got `str` (expected int)" in errors[5]
        assert "add: expected 2 argument(s)" in errors[7]
        assert answers[9] == (frames.RESPONSE, encode(3))
        assert "boom: malformed arguments" in errors[13]
        assert not connection.is_closed
        # An oversized frame is refused from its header.
        # (A frame may exceed max_message_size by the envelope: headers around the value.)
        too_long = SETTINGS.max_message_size + ENVELOPE + 1
        peer.send(frames.HEADER.pack(too_long, frames.QUERY, 11, add))
        reason, told = await peer.closed_by(connection)
        assert reason == (
            f"a frame of {too_long} bytes exceeds max_message_size "
            f"({SETTINGS.max_message_size} bytes)"
        )
        assert told == reason
        await t.good_call()


def session(peer: RawPeer, rng: random.Random) -> list[bytes]:
    """The frames of a plausible session after the server's HELLO (right or wrong secret)."""
    menu = SAFE_MENU
    index = {e.name: i for i, e in enumerate(menu)}
    out = [peer.hello_frame(), peer.auth_frame(SECRET if rng.random() < 0.8 else b"bad"),
           frame(frames.MENU, payload=encode([]))]
    for call_id in range(1, 2 * rng.randint(1, 12), 2):
        choice = rng.choice(SAFE)
        arguments: tuple[Any, ...] = {
            "add": (rng.randint(-5, 5), rng.randint(-5, 5)),
            "echo": (rng.randbytes(rng.choice([0, 10, 1000, 200_000])),),
            "count": (rng.randint(0, 100_000),),
            "note": (rng.randint(0, 9),),
            "total": (2,),
            "counter": (1, rng.randint(0, 50)),
            "boom": ("fuzz",),
        }[choice]
        out.append(frame(frames.QUERY, call_id, index[choice], encode(arguments)))
        if choice in ("count", "counter"):
            out.append(frame(frames.CREDIT, call_id, rng.randint(0, 1 << 20)))
        if choice == "total":
            out += [frame(frames.ITEM, call_id, 0, encode(i)) for i in range(rng.randint(0, 5))]
            out.append(frame(frames.END, call_id))
        if rng.random() < 0.2:
            out.append(frame(frames.ABORT, call_id))
        if rng.random() < 0.3:
            out.append(frame(frames.HEARTBEAT))
    if rng.random() < 0.3:
        out.append(frame(frames.CLOSE, payload=encode("fuzz done")))
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(0, 4)):
        action = rng.randrange(7)
        at = rng.randrange(len(buffer) + 1)
        if action == 0 and buffer:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                buffer[rng.randrange(len(buffer))] = rng.randrange(256)
        elif action == 1:  # truncate
            del buffer[at:]
        elif action == 2:  # insert random bytes
            buffer[at:at] = rng.randbytes(rng.randint(1, 64))
        elif action == 3:  # delete a span
            del buffer[at : at + rng.randint(1, 64)]
        elif action == 4:  # an oversized or undersized header
            length = rng.choice([0, 8, 4097, SETTINGS.max_message_size + 65, 0xFFFF_FFFF])
            buffer[at:at] = frames.HEADER.pack(length, rng.randrange(256), 1, 0)
        elif action == 5:  # a frame of a random type with a random payload
            buffer[at:at] = frame(rng.randrange(256), rng.randrange(16), rng.randrange(16),
                                  rng.randbytes(rng.randint(0, 100)))
        else:  # duplicate a span
            buffer[at:at] = buffer[at : at + rng.randint(1, 200)]
    return bytes(buffer)


async def test_random_sessions_do_not_hurt_the_server() -> None:
    async with target() as t:
        bystander = await rpc.connect_tcp(*tcp_address(t.server), secret=SECRET)
        await t.good_call()
        baseline = rss()
        reasons: list[str] = []
        rng = random.Random(20261127)
        for round_ in range(300):
            peer, connection = await t.open()
            if round_ % 10 == 0:
                data = rng.randbytes(rng.randint(0, 20_000))  # pure noise
            else:
                data = mutate(b"".join(session(peer, rng)), rng)
            position = 0
            while position < len(data):  # in random pieces
                step = rng.randint(1, 70_000)
                peer.send(data[position : position + step])
                position += step
                with contextlib.suppress(ConnectionError):
                    await peer.writer.drain()
            with contextlib.suppress(OSError):
                peer.writer.write_eof()
            reasons.append(await asyncio.wait_for(connection.wait_closed(), TIMEOUT))
            peer.writer.transport.abort()
        assert all(reasons), reasons
        kinds = {" ".join(r.split()[:2]) for r in reasons}
        assert len(kinds) >= 6, kinds  # the fuzz reached several different refusals
        growth = rss() - baseline
        assert growth < 64 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB"
        # The server goes on serving: the connection made before, and new ones.
        assert await bystander.call(S.add, 2, 2) == 4
        await t.good_call()
        bystander.close()
        await bystander.wait_closed()


async def test_garbled_answers_fail_only_their_call() -> None:
    """The calling side of a connection against a peer that answers with garbage: each bad
    answer fails its call with ProtocolError; the connection survives."""
    connected: list[rpc.Connection] = []
    ready = asyncio.Event()

    def on_connection(connection: rpc.Connection) -> None:
        connected.append(connection)
        ready.set()

    greet = rpc.FunctionSpec("greet", kind="rpc", response=str)
    words = rpc.FunctionSpec("words", kind="pipe", item=str)
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    server = await rpc.serve_tcp(secret=SECRET, on_connection=on_connection)
    async with server:
        peer = await RawPeer.open(server.address)
        await peer.handshake(menu=[menu_entry(greet), menu_entry(words)])
        await wait_for(ready.wait())
        connection = connected[0]
        answers = [
            (frames.RESPONSE, b"\xa2\xff\xfe", "greet: malformed result"),
            (frames.RESPONSE, b"\xc1", "greet: malformed result"),
            (frames.RESPONSE, encode(5), "greet: result: Expected `str`, got `int`"),
            (frames.ERROR, b"\xa2\xff\xfe", "greet: malformed error message"),
            (frames.ERROR, encode(["protocol", "X", "told you", ""]), "told you"),
        ]
        for message_type, payload, expected in answers:
            call = asyncio.ensure_future(connection.call(greet))
            got = await peer.read_frame()
            while got is not None and got[0] == frames.HEARTBEAT:
                got = await peer.read_frame()
            assert got is not None and got[0] == frames.QUERY
            peer.send_frame(message_type, got[1], 0, payload)
            with pytest.raises(rpc.ProtocolError, match=re.escape(expected)):
                await wait_for(call)
        reader = await connection.pipe(words)
        got = await peer.read_frame()
        while got is not None and got[0] != frames.QUERY:
            got = await peer.read_frame()
        assert got is not None
        peer.send_frame(frames.ITEM, got[1], 0, encode("fine"))
        peer.send_frame(frames.ITEM, got[1], 0, b"\xa2\xff\xfe")
        assert await wait_for(anext(reader)) == "fine"
        with pytest.raises(rpc.ProtocolError, match="words: malformed stream item"):
            await wait_for(anext(reader))
        assert not connection.is_closed
        peer.close()
        await wait_for(connection.wait_closed())
    assert loop_errors == [], loop_errors
