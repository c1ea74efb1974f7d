"""Shared pieces of the RPC tests: served functions, a hand-written wire peer, subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from rpc_parallel.rpc import frames

from . import layer as rpc

SECRET = b"test secret"
ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0
"""Upper bound for anything a test waits for (a bound, never a condition)."""


# ---------------------------------------------------------------------- served functions


class Service:
    """The functions the tests serve. ``events`` and ``log`` record what the server did."""

    def __init__(self) -> None:
        self.events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.log: list[Any] = []
        self.gates: defaultdict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self.yielded: defaultdict[str, int] = defaultdict(int)

    async def add(self, x: int, y: int = 1) -> int:
        return x + y

    async def echo(self, data: bytes) -> bytes:
        return data

    async def blob(self, size: int) -> bytes:
        return bytes(size)

    async def blobs(self, size: int) -> AsyncIterator[bytes]:
        yield b""
        yield bytes(size)

    async def swallow_bytes(self, stream: AsyncIterator[bytes]) -> int:
        return sum([len(item) async for item in stream])

    async def boom(self, message: str) -> int:
        raise ValueError(message)

    async def hang(self, tag: str) -> int:
        self.events[f"{tag}:started"].set()
        try:
            await asyncio.Future()
        except asyncio.CancelledError:
            self.events[f"{tag}:cancelled"].set()
            raise
        return 0

    async def gated(self, i: int) -> int:
        await self.gates[i].wait()
        return i

    def double(self, x: int) -> int:
        return 2 * x

    def spin(self, seconds: float) -> int:
        """CPU-bound pure Python for ``seconds`` (holds the GIL as much as Python lets it)."""
        import time

        deadline = time.perf_counter() + seconds
        turns = 0
        while time.perf_counter() < deadline:
            turns += sum(range(100))
        return turns

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    def count_in_thread(self, n: int) -> Iterator[int]:
        yield from range(n)

    async def endless(self, tag: str) -> AsyncIterator[int]:
        self.events[f"{tag}:started"].set()
        try:
            i = 0
            while True:
                yield i
                self.yielded[tag] += 1
                i += 1
        finally:
            self.events[f"{tag}:finally"].set()

    async def stalled(self, tag: str) -> AsyncIterator[int]:
        """Yields one item, then waits forever."""
        try:
            yield 0
            self.events[f"{tag}:started"].set()
            await asyncio.Future()
        finally:
            self.events[f"{tag}:finally"].set()

    async def counter(self, start: int, n: int) -> tuple[str, AsyncIterator[int]]:
        async def updates() -> AsyncIterator[int]:
            for i in range(n):
                yield start + i

        return f"from {start}", updates()

    async def state_hang(self, tag: str) -> tuple[str, AsyncIterator[int]]:
        """Never produces its initial state."""
        self.events[f"{tag}:started"].set()
        try:
            await asyncio.Future()
        finally:
            self.events[f"{tag}:finally"].set()

        async def none() -> AsyncIterator[int]:
            yield 0

        return "never", none()

    async def state_stalled(self, tag: str) -> tuple[str, AsyncIterator[int]]:
        return "ready", self.stalled(tag)

    async def note(self, x: int) -> None:
        self.log.append(x)
        self.events[f"note:{x}"].set()

    async def note_hang(self, tag: str) -> None:
        self.events[f"{tag}:started"].set()
        try:
            await asyncio.Future()
        finally:
            self.events[f"{tag}:finally"].set()

    async def fail_one_way(self, message: str) -> None:
        raise ValueError(message)

    async def total(self, k: int, stream: AsyncIterator[int]) -> int:
        result = 0
        async for x in stream:
            result += k * x
        return result

    async def take(self, n: int, stream: AsyncIterator[int]) -> int:
        """Sum the first ``n`` items, then return without reading the rest."""
        result = 0
        taken = 0
        async for x in stream:
            result += x
            taken += 1
            if taken == n:
                break
        return result

    async def swallow_hang(self, tag: str, stream: AsyncIterator[int]) -> int:
        self.events[f"{tag}:started"].set()
        try:
            await asyncio.Future()
        finally:
            self.events[f"{tag}:finally"].set()
        return 0


KINDS: dict[str, rpc.Kind] = {
    "add": "rpc", "echo": "rpc", "boom": "rpc", "hang": "rpc", "gated": "rpc",
    "double": "rpc", "spin": "rpc", "blob": "rpc", "blobs": "pipe", "swallow_bytes": "reverse_pipe",
    "count": "pipe", "count_in_thread": "pipe", "endless": "pipe", "stalled": "pipe",
    "counter": "state", "state_hang": "state", "state_stalled": "state",
    "note": "one_way", "note_hang": "one_way", "fail_one_way": "one_way",
    "total": "reverse_pipe", "take": "reverse_pipe", "swallow_hang": "reverse_pipe",
}


class Specs:
    """The wire descriptions of :class:`Service`'s functions, as a caller holds them."""

    def __init__(self, cls: type, kinds: dict[str, rpc.Kind]) -> None:
        self.by_name = {
            name: rpc.FunctionSpec.from_callable(
                getattr(cls, name), kind=kind, name=name, skip_first=True
            )
            for name, kind in kinds.items()
        }

    def __getattr__(self, name: str) -> rpc.FunctionSpec:
        try:
            return self.by_name[name]
        except KeyError:
            raise AttributeError(name) from None


S = Specs(Service, KINDS)


def implementations(
    instance: object, specs: Specs = S
) -> list[rpc.Implementation]:
    return [
        rpc.Implementation(spec, getattr(instance, name)) for name, spec in specs.by_name.items()
    ]


# ---------------------------------------------------------------------- connected pairs


@dataclass
class Pair:
    """A server serving a :class:`Service` and one client connected to it."""

    server: rpc.Server
    client: rpc.Connection
    service: Service
    served: list[rpc.Connection]
    """Server-side connections, in the order they authenticated."""
    one_way_errors: list[tuple[rpc.FunctionSpec, BaseException]] = field(default_factory=list)
    one_way_error: asyncio.Event = field(default_factory=asyncio.Event)

    async def connect(self, **options: Any) -> rpc.Connection:
        address = self.server.address
        if isinstance(address, str):
            return await rpc.connect_unix(address, secret=SECRET, **options)
        return await rpc.connect_tcp(*address, secret=SECRET, **options)


@contextlib.asynccontextmanager
async def serving(
    transport: str = "tcp",
    *,
    settings: rpc.RpcSettings | None = None,
    client_settings: rpc.RpcSettings | None = None,
    service: Service | None = None,
) -> AsyncIterator[Pair]:
    service = service or Service()
    served: list[rpc.Connection] = []
    errors: list[tuple[rpc.FunctionSpec, BaseException]] = []
    errored = asyncio.Event()

    def on_one_way_error(spec: rpc.FunctionSpec, error: BaseException) -> None:
        errors.append((spec, error))
        errored.set()

    options: dict[str, Any] = {
        "secret": SECRET,
        "implementations": implementations(service),
        "settings": settings,
        "on_connection": served.append,
        "on_one_way_error": on_one_way_error,
    }
    directory = tempfile.mkdtemp(prefix="rpc", dir="/tmp")
    try:
        if transport == "tcp":
            server = await rpc.serve_tcp(**options)
        else:
            server = await rpc.serve_unix(os.path.join(directory, "s"), **options)
        async with server:
            pair = Pair(server, None, service, served, errors, errored)  # type: ignore[arg-type]
            pair.client = await pair.connect(settings=client_settings)
            try:
                yield pair
            finally:
                pair.client.close()
                await asyncio.wait_for(pair.client.wait_closed(), TIMEOUT)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def tcp_address(server: rpc.Server) -> tuple[str, int]:
    address = server.address
    assert isinstance(address, tuple)
    return address


async def wait_for(awaitable: Any, timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


# ---------------------------------------------------------------------- a peer by hand


def frame(message_type: int, call_id: int = 0, argument: int = 0, payload: bytes = b"") -> bytes:
    """One frame as frames.py lays it out."""
    return frames.HEADER.pack(
        len(payload) + frames.LENGTH_OVERHEAD, message_type, call_id, argument
    ) + payload


def proof(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    """The HMAC a side sends in AUTH (role, then the peer's nonce, then its own)."""
    return hmac.new(secret, b"rpc_parallel/1 " + role + first + second, hashlib.sha256).digest()


def encode(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


class RawPeer:
    """A client that speaks the protocol by hand over a real socket (no Connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.nonce = os.urandom(32)
        self.server_nonce = b""
        self.menu: list[frames.MenuEntry] = []

    @classmethod
    async def open(cls, address: tuple[str, int] | str) -> RawPeer:
        if isinstance(address, str):
            reader, writer = await asyncio.open_unix_connection(address)
        else:
            reader, writer = await asyncio.open_connection(*address)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frame(
        self, message_type: int, call_id: int = 0, argument: int = 0, payload: bytes = b""
    ) -> None:
        self.writer.write(frame(message_type, call_id, argument, payload))

    async def read_frame(self, timeout: float = TIMEOUT) -> tuple[int, int, int, bytes] | None:
        """The next frame, or None at end of stream."""
        try:
            header = await asyncio.wait_for(
                self.reader.readexactly(frames.HEADER_SIZE), timeout
            )
            length, message_type, call_id, argument = frames.HEADER.unpack(header)
            payload = await asyncio.wait_for(
                self.reader.readexactly(length - frames.LENGTH_OVERHEAD), timeout
            )
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        return message_type, call_id, argument, payload

    async def read_hello(self) -> None:
        got = await self.read_frame()
        assert got is not None and got[0] == frames.HELLO, got
        hello = frames.HELLO_DECODER.decode(got[3])
        assert hello.magic == frames.MAGIC and hello.version == frames.PROTOCOL_VERSION
        self.server_nonce = hello.nonce

    def hello_frame(self) -> bytes:
        return frame(
            frames.HELLO,
            payload=encode(frames.Hello(frames.MAGIC, frames.PROTOCOL_VERSION, self.nonce)),
        )

    def auth_frame(self, secret: bytes = SECRET) -> bytes:
        return frame(
            frames.AUTH, payload=encode(proof(secret, b"client", self.server_nonce, self.nonce))
        )

    async def handshake(
        self, secret: bytes = SECRET, menu: list[frames.MenuEntry] | None = None
    ) -> None:
        """HELLO, AUTH (both ways, checking the server's proof), MENU (both ways)."""
        if not self.server_nonce:
            await self.read_hello()
        self.send(self.hello_frame())
        got = await self.read_frame()
        assert got is not None and got[0] == frames.AUTH, got
        server_proof = frames.AUTH_DECODER.decode(got[3])
        assert hmac.compare_digest(
            server_proof, proof(secret, b"server", self.nonce, self.server_nonce)
        )
        self.send(self.auth_frame(secret))
        got = await self.read_frame()
        assert got is not None and got[0] == frames.MENU, got
        self.menu = frames.MENU_DECODER.decode(got[3])
        self.send_frame(frames.MENU, payload=encode(menu or []))
        await self.writer.drain()

    def index_of(self, name: str) -> int:
        return next(i for i, entry in enumerate(self.menu) if entry.name == name)

    async def close_reason(self, timeout: float = TIMEOUT) -> str | None:
        """Read until the server closes; the reason of its CLOSE frame (None if none came)."""
        reason = None
        async with asyncio.timeout(timeout):
            while True:
                got = await self.read_frame(timeout)
                if got is None:
                    return reason
                if got[0] == frames.CLOSE:
                    reason = frames.REASON_DECODER.decode(got[3])

    async def closed_by(self, connection: rpc.Connection) -> tuple[str, str | None]:
        """Wait for the server to close this peer's connection: its close reason, and the
        reason read in its CLOSE frame (if one came). Closes this end too, as a peer does."""
        told = await self.close_reason()
        self.close()
        return await asyncio.wait_for(connection.wait_closed(), TIMEOUT), told

    def close(self) -> None:
        self.writer.close()


def menu_entry(spec: rpc.FunctionSpec) -> frames.MenuEntry:
    return frames.MenuEntry(spec.name, spec.version, spec.kind, spec.digest, spec.signature)


# ---------------------------------------------------------------------- subprocess peers


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process, in bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def rss() -> int:
    """Current resident set size of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class Subprocess:
    """``python -m tests.rpc.peer ...`` in its own process; it exits when stdin closes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.pid = process.pid

    @classmethod
    async def start(cls, *arguments: str) -> Subprocess:
        environment = dict(os.environ, RPC_TEST_SECRET=SECRET.hex())
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.rpc.peer", *arguments,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=ROOT, env=environment,
        )
        return cls(process)

    async def line(self, timeout: float = 20.0) -> str:
        assert self.process.stdout is not None
        text = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not text:
            raise RuntimeError(f"peer {self.pid} exited (code {await self.process.wait()})")
        return text.decode().strip()

    async def stop(self) -> int:
        assert self.process.stdin is not None
        if self.process.returncode is None:
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), TIMEOUT)
            except TimeoutError:
                self.process.kill()
        return await self.process.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
