"""Shared-memory segments for large arrays between processes of one host (decision 0022).

A segment is a file in ``/dev/shm`` (a tmpfs: the pages are memory, no disk), named
``rpcp-<16 hex digits>-<n>``. The 16 hex digits are the *sending* side's tag on one
connection, derived from that side's handshake nonce, so both ends of a connection know the
names either of them may create.

Lifecycle, so that nothing is left in ``/dev/shm``:

- the sender creates the file (owner-only, exclusive), fills it, and puts only its name,
  dtype and shape in the message;
- the receiver, when it decodes the message, maps the file and unlinks it at once; the
  mapping (the received array's memory) lives on until the array is garbage;
- a message that is never decoded (a response to a cancelled call, a frame after close) is
  released by the receiver (``release``) or, at the latest, when the connection closes:
  **both** ends then unlink every segment of **both** tags (``Segments.close``), so the side
  that survives a crash cleans up after the one that died.

This module needs no numpy: it deals in bytes and names only.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

SHM_DIRECTORY = Path("/dev/shm")
NAME_PATTERN = re.compile(r"rpcp-([0-9a-f]{16})-[0-9]+")
SHARED = 2
"""The MessagePack extension code of an array in a segment (its header ends with the name)."""

_peer_tags: set[str] = set()
"""The tags of the peers of this process's open same-host connections: the only segments a
message may name (a peer on another host, or a closed connection's, names none)."""


def available() -> bool:
    """Whether this host offers ``/dev/shm`` segments (Linux with a writable tmpfs)."""
    return sys.platform.startswith("linux") and os.access(SHM_DIRECTORY, os.W_OK)


def tag_of(nonce: bytes) -> str:
    """The 16-hex-digit tag of the side whose handshake nonce is ``nonce``."""
    return nonce[:8].hex()


class SegmentError(OSError):
    """A segment named in a message cannot be used (missing, too small, not ours)."""


class Segments:
    """The segments of one connection: creates this side's, unlinks both sides' at close.

    ``own_tag`` names the segments this side creates, ``peer_tag`` those the peer creates.
    """

    __slots__ = ("_counter", "_own", "_peer", "closed")

    def __init__(self, own_tag: str, peer_tag: str) -> None:
        self._own = own_tag
        self._peer = peer_tag
        self._counter = 0
        self.closed = False
        _peer_tags.add(peer_tag)

    @property
    def mark(self) -> int:
        """How many segments this side has created; see ``discard_after``."""
        return self._counter

    def discard_after(self, mark: int) -> None:
        """Unlink the segments created since ``mark`` (a message that failed to encode)."""
        for number in range(mark + 1, self._counter + 1):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SHM_DIRECTORY / f"rpcp-{self._own}-{number}")

    def create(self, size: int) -> tuple[str, mmap.mmap]:
        """A new segment of ``size`` bytes, mapped read-write; ``OSError`` if /dev/shm is
        full (the caller then sends the data in band)."""
        if self.closed:
            raise SegmentError("the connection is closed")
        self._counter += 1
        name = f"rpcp-{self._own}-{self._counter}"
        path = SHM_DIRECTORY / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            if size:
                os.posix_fallocate(fd, 0, size)  # ENOSPC now, never SIGBUS on a later write
            return name, mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED | _POPULATE)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)

    def close(self) -> None:
        """Unlink every segment either side created on this connection and nobody took."""
        self.closed = True
        _peer_tags.discard(self._peer)
        for tag in (self._own, self._peer):
            for path in SHM_DIRECTORY.glob(f"rpcp-{tag}-*"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def __repr__(self) -> str:
        return f"<Segments own={self._own} peer={self._peer}{' closed' if self.closed else ''}>"


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def take(name: str, size: int) -> mmap.mmap:
    """Map the segment ``name`` (at least ``size`` bytes) and unlink it: from now on the
    mapping is its only reference, and the memory goes when the mapping does."""
    match = NAME_PATTERN.fullmatch(name)
    if match is None:
        raise SegmentError(f"{name!r} is not the name of an rpc_parallel segment")
    if match.group(1) not in _peer_tags:
        raise SegmentError(
            f"shared-memory segment {name} is not from the peer of an open connection between "
            "processes of this host"
        )
    path = SHM_DIRECTORY / name
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SegmentError(
            f"shared-memory segment {name} is gone (its sender's connection closed)"
        ) from None
    try:
        os.unlink(path)
        actual = os.fstat(fd).st_size
        if actual < size:
            raise SegmentError(f"shared-memory segment {name} holds {actual} bytes, not {size}")
        return mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED | _POPULATE)
    finally:
        os.close(fd)


def release(name: str) -> None:
    """Unlink the segment ``name`` of a message that will not be decoded (if it exists)."""
    match = NAME_PATTERN.fullmatch(name)
    if match is not None and match.group(1) in _peer_tags:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIRECTORY / name)


def release_extension(code: int, data: memoryview) -> None:
    """Unlink the segment a ``SHARED`` extension value names (see ``release_in``)."""
    if code == SHARED:
        with contextlib.suppress(msgspec.MsgspecError, ValueError, IndexError):
            header = _HEADER_DECODER.decode(data)
            if header and isinstance(header[-1], str):
                release(header[-1])


_HEADER_DECODER = msgspec.msgpack.Decoder(list[Any])
_RELEASER = msgspec.msgpack.Decoder(ext_hook=release_extension)


def release_in(payload: memoryview | bytes) -> None:
    """Unlink the segments a message names, when it will not be decoded (a frame dropped,
    or one that failed to decode before reaching them). Never raises."""
    if _peer_tags:
        with contextlib.suppress(msgspec.MsgspecError, ValueError, RecursionError):
            _RELEASER.decode(payload)
