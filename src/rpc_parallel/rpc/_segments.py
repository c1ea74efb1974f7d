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

SHM_DIRECTORY = Path("/dev/shm")
NAME_PATTERN = re.compile(r"rpcp-[0-9a-f]{16}-[0-9]+")


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
    if NAME_PATTERN.fullmatch(name) is None:
        raise SegmentError(f"{name!r} is not the name of an rpc_parallel segment")
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
    if NAME_PATTERN.fullmatch(name) is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIRECTORY / name)
