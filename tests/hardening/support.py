"""Counting what a process holds (children, zombies, fds, threads, temp files) and the raw
wire format of docs/architecture.md section 3, for the hardening tests.

Only the public API of rpc_parallel is used here; frames are built with ``struct`` and msgspec
from the documented format so that these tests survive any change to the package's internals.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ..workers.support import all_pids, stat_fields

HEADER = struct.Struct("<IBII")
HELLO, AUTH, MENU, QUERY, RESPONSE, ERROR, ITEM, END, ABORT, CREDIT, HEARTBEAT, CLOSE = range(1, 13)
PREAUTH_LIMIT = 4096


# ----------------------------------------------------------------------------- counting


def descendants(root: int | None = None) -> set[int]:
    """Every live or zombie process below ``root`` (default: this process), by pid."""
    root = os.getpid() if root is None else root
    parent_of: dict[int, int] = {}
    for pid in all_pids():
        fields = stat_fields(pid)
        if fields is not None:
            parent_of[pid] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parent_of.items() if parent in frontier} - found
        found |= frontier
    return found


def zombies_of(root: int | None = None) -> set[int]:
    found = set()
    for pid in descendants(root):
        fields = stat_fields(pid)
        if fields is not None and fields[0] == "Z":
            found.add(pid)
    return found


def fd_count(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or os.getpid()}/fd"))


def thread_count(pid: int | None = None) -> int:
    return len(os.listdir(f"/proc/{pid or os.getpid()}/task"))


def rss_bytes(pid: int | None = None) -> int:
    with open(f"/proc/{pid or os.getpid()}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def temp_entries(directory: str | None = None) -> set[str]:
    """Names ``rpc_parallel-*`` in the temporary directory (this process's by default)."""
    directory = directory or tempfile.gettempdir()
    return {name for name in os.listdir(directory) if name.startswith("rpc_parallel-")}


@dataclass(frozen=True)
class Snapshot:
    """What this process holds; compared for exact equality before and after a fault."""

    children: frozenset[int]
    zombies: frozenset[int]
    fds: int
    threads: int
    temp_files: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def take(cls) -> Snapshot:
        return cls(frozenset(descendants()), frozenset(zombies_of()), fd_count(),
                   thread_count(), frozenset(temp_entries()))


async def settle(before: Snapshot, timeout: float = 10.0, what: str = "",
                 files: bool = True) -> float:
    """Wait (bounded) until this process holds exactly what it held in ``before``
    (``files=False``: everything but the temp files, which a separate test checks)."""
    start = time.monotonic()
    if not files:
        before = dataclasses.replace(before, temp_files=frozenset())
    while True:
        now = Snapshot.take()
        if not files:
            now = dataclasses.replace(now, temp_files=frozenset())
        if now == before:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(
                f"{what}: not back to the count before within {timeout:g} s:\n"
                f"  before {before}\n  after  {now}"
            )
        await asyncio.sleep(0.05)


async def poll(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


def private_tmpdir(path: Path) -> str:
    """Make ``path`` this process's (and its future children's) temporary directory."""
    os.environ["TMPDIR"] = str(path)
    tempfile.tempdir = str(path)
    return str(path)


# ----------------------------------------------------------------------------- the wire


def frame(kind: int, payload: object = None, *, call_id: int = 0, argument: int = 0,
          raw: bytes | None = None) -> bytes:
    """One frame as docs/architecture.md 3.1 describes it."""
    body = raw if raw is not None else (b"" if payload is None else msgspec.msgpack.encode(payload))
    return HEADER.pack(9 + len(body), kind, call_id, argument) + body


def hello(nonce: bytes) -> bytes:
    return frame(HELLO, ["rpc_parallel", 1, nonce])


def proof(secret: bytes, role: bytes, peer_nonce: bytes, own_nonce: bytes) -> bytes:
    return hmac.new(secret, b"rpc_parallel/1 " + role + peer_nonce + own_nonce,
                    hashlib.sha256).digest()


def read_frame(sock: socket.socket, timeout: float = 10.0) -> tuple[int, int, int, bytes] | None:
    """The next frame (type, call id, argument, payload), or None when the peer closed."""
    sock.settimeout(timeout)
    head = _read_exactly(sock, HEADER.size)
    if head is None:
        return None
    length, kind, call_id, argument = HEADER.unpack(head)
    body = _read_exactly(sock, length - 9) if length > 9 else b""
    if body is None:
        return None
    return kind, call_id, argument, body


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        try:
            chunk = sock.recv(size - len(data))
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not chunk:
            return None
        data += chunk
    return data


def closed_within(sock: socket.socket, timeout: float) -> float:
    """Read and drop what the peer sends until it closes; how long that took (bounded)."""
    start = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - start < timeout:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    raise AssertionError(f"the peer did not close the connection within {timeout:g} s")


@dataclass
class Session:
    """A raw client that completed a handshake: its socket, the frames it sent, the menu."""

    sock: socket.socket
    sent: list[bytes]
    server_nonce: bytes
    menu: list[list[object]]


def raw_handshake(sock: socket.socket, secret: bytes, timeout: float = 10.0) -> Session:
    """The client side of the handshake of 3.4, done by hand; records what it sent."""
    nonce = os.urandom(32)
    sent = [hello(nonce)]
    sock.sendall(sent[0])
    server_nonce = b""
    menu: list[list[object]] = []
    while True:
        got = read_frame(sock, timeout)
        assert got is not None, "the server closed during a good handshake"
        kind, _, _, body = got
        if kind == HELLO:
            server_nonce = msgspec.msgpack.decode(body)[2]
            sent.append(frame(AUTH, proof(secret, b"client", server_nonce, nonce)))
            sock.sendall(sent[-1])
        elif kind == MENU:
            menu = msgspec.msgpack.decode(body)
            return Session(sock, sent, server_nonce, menu)


def unix_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return sock


def tcp_socket(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address)
