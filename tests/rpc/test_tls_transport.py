"""The RPC layer's own TLS transport (rpc/_tls_transport.py) over real sockets: large
messages both ways, flow control, closing and aborting, a corrupt record, the listener's
handshake timeout and cap; on uvloop and on asyncio's own loop."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest

from rpc_parallel.rpc import FunctionSpec, _tls_transport, tls
from rpc_parallel.rpc import loop as rpc_loop

from . import layer as rpc
from .support import wait_for

SECRET = b"tls transport test secret"
IDENTITY = tls.TlsIdentity.generate()
MIB = 1024 * 1024
LOOPS = ["uvloop", "asyncio"]


def run_on(loop_kind: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on a fresh loop of the kind asked for."""
    if loop_kind == "uvloop":
        if not rpc_loop.uvloop_available():
            pytest.skip("uvloop is not installed")
        rpc_loop.run(main())
    else:
        with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
            runner.run(main())


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds, for at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


# ---------------------------------------------------------------------- the RPC layer


async def echo(data: bytes) -> bytes:
    return data


async def add(x: int, y: int) -> int:
    return x + y


ECHO = FunctionSpec.from_callable(echo, kind="rpc", name="echo")
ADD = FunctionSpec.from_callable(add, kind="rpc", name="add")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_large_messages_both_ways_with_small_calls_between(loop_kind: str) -> None:
    async def main() -> None:
        server = await rpc.serve_tcp(
            "127.0.0.1", 0, secret=SECRET, ssl=tls.server_context(IDENTITY),
            implementations=[rpc.Implementation(ECHO, echo), rpc.Implementation(ADD, add)])
        async with server:
            client = await wait_for(rpc.connect_tcp(
                *server.address, secret=SECRET, ssl=tls.client_context(IDENTITY)))  # type: ignore[misc]
            try:
                payloads = [os.urandom(size) for size in (8 * MIB, 3 * MIB + 7, 1, 70_000)]
                big = [client.call(ECHO, payload) for payload in payloads]
                small = [client.call(ADD, i, i) for i in range(300)]
                answers = await wait_for(asyncio.gather(*big, *small), 60)
                assert answers[:len(payloads)] == payloads
                assert answers[len(payloads):] == [2 * i for i in range(300)]
            finally:
                client.close()
                await wait_for(client.wait_closed())

    run_on(loop_kind, main)


# ---------------------------------------------------------------------- the transport


class Recorder(asyncio.BufferedProtocol):
    """Keeps what it receives and every event it is told of."""

    def __init__(self) -> None:
        self.transport: _tls_transport.TlsTransport | None = None
        self.buffer = bytearray(100_000)
        self.data = bytearray()
        self.paused = self.resumed = 0
        self.eof = False
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, _tls_transport.TlsTransport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.data += self.buffer[:nbytes]

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def eof_received(self) -> None:
        self.eof = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set_result(exc)


def _listening_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@asynccontextmanager
async def tls_pair() -> AsyncIterator[tuple[Recorder, Recorder]]:
    """A client and a server ``Recorder``, joined by a TLS connection on loopback."""
    loop = asyncio.get_running_loop()
    ready: list[_tls_transport.Tls] = []
    listener = _tls_transport.TlsListener(
        _listening_socket(), tls.server_context(IDENTITY), ready.append, timeout=10,
        max_handshakes=8)
    client, server = Recorder(), Recorder()
    try:
        sock = await _tls_transport.open_connection(*listener.sockets[0].getsockname())
        session = await wait_for(_tls_transport.handshake(
            sock, tls.client_context(IDENTITY), server_side=False,
            server_hostname="127.0.0.1", timeout=10))
        _tls_transport.TlsTransport(loop, session, client).start()
        await until(lambda: bool(ready), "the server's side of the handshake")
        _tls_transport.TlsTransport(loop, ready[0], server).start()
        yield client, server
    finally:
        for side in (client, server):
            if side.transport is not None:
                side.transport.abort()
        listener.close()
        await wait_for(listener.wait_closed())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_flow_control_pauses_and_resumes_the_writer(loop_kind: str) -> None:
    async def main() -> None:
        async with tls_pair() as (client, server):
            assert client.transport is not None and server.transport is not None
            assert server.transport.get_extra_info("cipher")[1] == "TLSv1.3"
            server.transport.pause_reading()
            payload = os.urandom(32 * MIB)
            for start in range(0, len(payload), MIB):
                client.transport.write(payload[start:start + MIB])
            assert client.paused == 1  # told once, when past the high-water mark
            assert client.transport.get_write_buffer_size() > 0
            server.transport.resume_reading()
            await until(lambda: len(server.data) == len(payload), "all 32 MiB to arrive")
            assert server.data == payload
            await until(lambda: client.resumed == 1, "the writer to be resumed")
            assert client.transport.get_write_buffer_size() == 0

    run_on(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_close_sends_everything_pending_then_closes(loop_kind: str) -> None:
    async def main() -> None:
        async with tls_pair() as (client, server):
            assert client.transport is not None
            payload = os.urandom(16 * MIB)
            client.transport.write(payload)
            client.transport.close()
            assert client.transport.is_closing()
            client.transport.write(b"dropped: written after close")
            assert await wait_for(client.lost, 30) is None
            assert await wait_for(server.lost, 30) is None
            assert server.data == payload and server.eof

    run_on(loop_kind, main)


async def test_abort_drops_what_is_pending_at_once() -> None:
    async with tls_pair() as (client, server):
        assert client.transport is not None and server.transport is not None
        server.transport.pause_reading()
        client.transport.write(os.urandom(64 * MIB))
        client.transport.abort()
        assert await wait_for(client.lost) is None
        assert client.transport.get_write_buffer_size() == 0
        server.transport.resume_reading()
        await wait_for(server.lost)  # the end of the connection, or a reset
        assert len(server.data) < 64 * MIB


async def test_a_corrupt_record_fails_the_connection() -> None:
    async with tls_pair() as (client, server):
        assert client.transport is not None
        client.transport.write(b"before")
        await until(lambda: server.data == b"before", "the first record")
        raw: socket.socket = client.transport.get_extra_info("socket")
        raw.send(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # application data, bad tag
        error = await wait_for(server.lost)
        assert isinstance(error, OSError), error  # ssl.SSLError: bad record MAC


async def test_listener_caps_pending_handshakes_and_times_them_out() -> None:
    """Clients that connect but never start TLS: beyond ``max_handshakes`` the oldest are
    dropped at once; the others when the handshake timeout ends."""
    ready: list[_tls_transport.Tls] = []
    listener = _tls_transport.TlsListener(
        _listening_socket(), tls.server_context(IDENTITY), ready.append, timeout=1.0,
        max_handshakes=3)
    loop = asyncio.get_running_loop()
    silent: list[socket.socket] = []
    try:
        address = listener.sockets[0].getsockname()
        for _ in range(5):
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
            silent.append(sock)
        started = time.monotonic()
        for sock in silent[:2]:  # the oldest two: dropped as soon as the others came
            assert await wait_for(_until_closed(loop, sock)) == b""
        assert time.monotonic() - started < 0.9
        for sock in silent[2:]:  # the rest: after the timeout
            assert await wait_for(_until_closed(loop, sock)) == b""
        assert time.monotonic() - started >= 0.9
        assert not ready
    finally:
        for sock in silent:
            sock.close()
        listener.close()
        await wait_for(listener.wait_closed())
    assert not listener.is_serving()


async def _until_closed(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    try:
        return await loop.sock_recv(sock, 100)
    except ConnectionResetError:
        return b""


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def test_tls_over_ipv6_loopback() -> None:
    if not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    server = await rpc.serve_tcp(
        "::1", 0, secret=SECRET, ssl=tls.server_context(IDENTITY),
        implementations=[rpc.Implementation(ADD, add)])
    async with server:
        assert server.address[0] == "::1"
        client = await wait_for(rpc.connect_tcp(
            "::1", server.address[1], secret=SECRET, ssl=tls.client_context(IDENTITY)))  # type: ignore[misc]
        try:
            assert await wait_for(client.call(ADD, 2, 3)) == 5
            assert client.peer_address[0] == "::1"
        finally:
            client.close()
            await wait_for(client.wait_closed())
