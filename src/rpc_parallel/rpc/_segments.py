"""Shared-memory segments for large arrays between processes of one host (decision 0022).

A segment is a file in ``/dev/shm`` (a tmpfs: the pages are memory, no disk), named
``rpcp-<pid>-<16 hex digits>-<n>``: the process that created it, and the *sending* side's
tag on one connection, derived from that side's handshake nonce, so both ends of a
connection know the names either of them may create. A segment starts with a 64-byte header whose first word
says whether it is lent to the peer (``LENT``) or back with its owner (``FREE``); the data
follows at ``DATA_OFFSET``.

Lifecycle, so that memory is reused and nothing is left in ``/dev/shm``:

- the sender *lends* a segment: it takes a free one of its own of the right size (or creates
  one), marks it ``LENT`` and writes the array into it with ``pwrite`` (one copy, by the
  kernel: the sender never maps it, so it adds nothing to the sender's memory), and puts
  only its name, dtype and shape in the message;
- the receiver, when it decodes the message, maps the segment (once: the mapping is kept
  for the next time the segment comes, as filling page tables costs as much as copying):
  the received array's memory, no copy. When the last view of that array is garbage, the
  receiver marks the segment ``FREE`` again, and the sender may reuse it — its pages are
  already allocated, which is most of the cost of a fresh segment;
- a message that is never decoded (a response to a cancelled call, a frame dropped, a
  message that failed to decode) is given back by the receiver (``release_in``); an encode
  that fails halfway gives back what it lent (``discard_after``);
- a side keeps a few free segments for reuse (``KEEP_FREE``, at most ``KEEP_FREE_BYTES``)
  and unlinks the others; when a connection closes, **both** ends unlink every segment of
  **both** tags (``Segments.close``), so the side that survives a crash cleans up after the
  one that died.

This module needs no numpy: it deals in bytes and names only.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import mmap
import os
import re
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import msgspec

SHM_DIRECTORY = Path("/dev/shm")
NAME_PATTERN = re.compile(r"rpcp-[0-9]+-([0-9a-f]{16})-[0-9]+")
SHARED = 2
"""The MessagePack extension code of an array in a segment (its header ends with the name)."""
DATA_OFFSET = 64
FREE, LENT = b"free\0\0\0\0", b"lent\0\0\0\0"
KEEP_FREE = 4
KEEP_FREE_BYTES = 1 << 30
_PAGE = mmap.PAGESIZE
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

_open: set[Segments] = set()
"""The segments of this process's open connections (``sweep_all``)."""

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
    """The segments of one connection: lends this side's, sweeps both sides' at close.

    ``own_tag`` names the segments this side creates, ``peer_tag`` those the peer creates.
    """

    __slots__ = ("_created", "_guard", "_lent", "_own", "_peer", "_pool", "closed", "lent_bytes",
                 "mark")

    def __init__(self, own_tag: str, peer_tag: str) -> None:
        self._own = own_tag
        self._peer = peer_tag
        self.mark = 0
        """How many segments this side has lent: a connection notes it before encoding a
        message, and gives back what was lent since if the encoding fails (``discard_after``)."""
        self._created = 0  # names are never reused: a stale mapping must not free a new file
        self._pool: dict[str, int] = {}  # name -> capacity (data bytes), oldest first
        self._lent: collections.deque[tuple[int, str]] = collections.deque(maxlen=256)
        self.closed = False
        self._guard = threading.Lock()
        """Held while a segment is chosen or created, and while ``close`` sweeps: a worker's
        stdin watcher sweeps (``sweep_all``) from its own thread, then ends the process at
        once; a segment the event loop's thread created meanwhile would be left behind."""
        self.lent_bytes = 0
        """Data bytes lent so far: what a stream item's segments add to its cost."""
        _peer_tags.add(peer_tag)
        _open.add(self)

    def lend(self, data: memoryview) -> str:
        """The name of a segment holding ``data`` (bytes), marked lent; ``OSError`` if
        /dev/shm is full (then the array goes in band)."""
        size = data.nbytes
        with self._guard:
            if self.closed:
                raise SegmentError("the connection is closed")
            name = self._reusable(size)
            if name is None:
                name = self._create(size)
        fd = os.open(SHM_DIRECTORY / name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            written = 0
            while written < size:  # (one call writes at most about 2 GiB)
                written += os.pwrite(fd, data[written:], DATA_OFFSET + written)
            os.pwrite(fd, LENT, 0)
        except BaseException:
            give_back(name)
            raise
        finally:
            os.close(fd)
        self.lent_bytes += size
        self.mark += 1
        self._lent.append((self.mark, name))
        return name

    def _reusable(self, size: int) -> str | None:
        """A free segment of this side that fits ``size`` without wasting half of it."""
        for name, capacity in self._pool.items():
            if size <= capacity <= 2 * size + _PAGE and _state(name) == FREE:
                return name
        return None

    def _create(self, size: int) -> str:
        self._trim(size)
        self._created += 1
        name = f"rpcp-{os.getpid()}-{self._own}-{self._created}"
        path = SHM_DIRECTORY / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            # Allocated now: ENOSPC here, never SIGBUS on a later write.
            os.posix_fallocate(fd, 0, DATA_OFFSET + size)
            os.pwrite(fd, FREE, 0)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        self._pool[name] = size
        return name

    def _trim(self, size: int) -> None:
        """Unlink free segments beyond ``KEEP_FREE`` / ``KEEP_FREE_BYTES`` (counting the one
        about to be made), oldest first."""
        free = [(name, capacity) for name, capacity in self._pool.items() if _state(name) == FREE]
        count, total = len(free) + 1, sum(c for _, c in free) + size
        for name, capacity in free:
            if count <= KEEP_FREE and total <= KEEP_FREE_BYTES:
                break
            del self._pool[name]
            _unlink(name)
            count, total = count - 1, total - capacity

    def discard_after(self, mark: int) -> None:
        """Give back the segments lent since ``mark`` (a message that failed to encode)."""
        for counter, name in self._lent:
            if counter > mark:
                give_back(name)

    def close(self) -> None:
        """Unlink every segment either side created on this connection. A mapping of one
        (a received array) stays valid; its memory goes when the mapping does. Any thread:
        a ``lend`` under way on another finishes first, and none starts after."""
        with self._guard:
            self.closed = True
            self._pool.clear()
            _peer_tags.discard(self._peer)
            _open.discard(self)
            marks = (f"-{self._own}-", f"-{self._peer}-")
            for name in _segment_names():
                if marks[0] in name or marks[1] in name:
                    _unlink(name)
            for name in [n for n in list(_mapped) if marks[0] in n or marks[1] in n]:
                _mapped.pop(name, None)  # arrays still using one keep it mapped

    def __repr__(self) -> str:
        return f"<Segments own={self._own} peer={self._peer}{' closed' if self.closed else ''}>"


def sweep_processes(pids: set[int]) -> None:
    """Unlink every segment the processes ``pids`` created: for a fork server whose children
    are about to die with it (and, once it is dead, for its master's)."""
    prefixes = tuple(f"rpcp-{pid}-" for pid in pids)
    for name in _segment_names():
        if name.startswith(prefixes):
            _unlink(name)


def _segment_names() -> list[str]:
    """The names of every segment in ``SHM_DIRECTORY`` (any process's): one ``listdir``, no
    pattern to compile (a ``glob`` compiled a regular expression per call, which cost a
    connection's close a millisecond)."""
    try:
        return [name for name in os.listdir(SHM_DIRECTORY) if name.startswith("rpcp-")]
    except OSError:
        return []


def sweep_all() -> None:
    """Unlink the segments of every open connection of this process: for a process about
    to end without closing them (a worker whose master is gone). Any thread."""
    for segments in list(_open):
        segments.close()


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(SHM_DIRECTORY / name)


class _Mapping:
    """A peer's segment mapped in this process, kept while the segment exists."""

    __slots__ = ("address", "anchor", "mapping", "size")

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            self.size = os.fstat(fd).st_size
            self.mapping = mmap.mmap(fd, self.size, flags=mmap.MAP_SHARED | _POPULATE)
        finally:
            os.close(fd)
        self.anchor = ctypes.c_char.from_buffer(self.mapping)
        self.address = ctypes.addressof(self.anchor)


_mapped: dict[str, _Mapping] = {}
"""Segments of peers mapped here, by name: mapped once, reused each time one comes again."""


class Lent:
    """The memory of one received array: numpy reads it through ``__array_interface__`` and
    keeps this object as the array's base, so it lives as long as any view of the array;
    then the segment is given back."""

    __slots__ = ("__array_interface__", "__weakref__", "_mapping")

    def __init__(self, mapping: _Mapping, size: int) -> None:
        self._mapping = mapping
        self.__array_interface__ = {
            "version": 3, "shape": (size,), "typestr": "|u1",
            "data": (mapping.address + DATA_OFFSET, False),
        }


def _forget_gone() -> None:
    """Drop the mappings of segments their owners have unlinked (their memory goes with
    the last array using it)."""
    for name in list(_mapped):
        if not os.path.exists(SHM_DIRECTORY / name):
            _mapped.pop(name, None)


def _state(name: str) -> bytes | None:
    try:
        fd = os.open(SHM_DIRECTORY / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, 8, 0)
    finally:
        os.close(fd)


def give_back(name: str) -> None:
    """Mark the segment ``name`` free for its owner to reuse (if it still exists)."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(SHM_DIRECTORY / name, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.pwrite(fd, FREE, 0)
        finally:
            os.close(fd)


def _checked(name: str) -> Path:
    match = NAME_PATTERN.fullmatch(name)
    if match is None:
        raise SegmentError(f"{name!r} is not the name of an rpc_parallel segment")
    if match.group(1) not in _peer_tags:
        raise SegmentError(
            f"shared-memory segment {name} is not from the peer of an open connection between "
            "processes of this host"
        )
    return SHM_DIRECTORY / name


def take(name: str, size: int) -> Lent:
    """The ``size`` data bytes of the lent segment ``name``, as memory numpy can view. When
    the last view is garbage, the segment goes back to its owner."""
    path = _checked(name)
    mapped = _mapped.get(name)
    if mapped is None or mapped.size < DATA_OFFSET + size:
        _forget_gone()
        try:
            mapped = _Mapping(path)
        except FileNotFoundError:
            raise SegmentError(
                f"shared-memory segment {name} is gone (its sender's connection closed)"
            ) from None
        _mapped[name] = mapped
    if mapped.size < DATA_OFFSET + size:
        raise SegmentError(f"shared-memory segment {name} holds {mapped.size} bytes, "
                           f"not {DATA_OFFSET + size}")
    if mapped.mapping[:8] != LENT:
        raise SegmentError(f"shared-memory segment {name} is not lent (a stale message?)")
    lent = Lent(mapped, size)
    weakref.finalize(lent, _returned, mapped.mapping)
    return lent


def _returned(mapping: mmap.mmap) -> None:
    with contextlib.suppress(ValueError):  # (closed)
        mapping[:8] = FREE


def release(name: str) -> None:
    """Give back the segment ``name`` of a message that will not be decoded."""
    with contextlib.suppress(SegmentError):
        give_back(_checked(name).name)


def release_extension(code: int, data: memoryview) -> None:
    """Give back the segment a ``SHARED`` extension value names (see ``release_in``)."""
    if code == SHARED:
        with contextlib.suppress(msgspec.MsgspecError, ValueError, IndexError):
            header = _HEADER_DECODER.decode(data)
            if header and isinstance(header[-1], str):
                release(header[-1])


_HEADER_DECODER = msgspec.msgpack.Decoder(list[Any])
_RELEASER = msgspec.msgpack.Decoder(ext_hook=release_extension)


def release_in(payload: memoryview | bytes) -> None:
    """Give back the segments a message names, when it will not be decoded (a frame dropped,
    or one that failed to decode before reaching them). Never raises."""
    if _peer_tags:
        with contextlib.suppress(msgspec.MsgspecError, ValueError, RecursionError):
            _RELEASER.decode(payload)
