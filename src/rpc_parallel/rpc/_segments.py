"""Shared-memory segments for large arrays between processes of one host (decision 0022).

A segment is a file in ``/dev/shm`` (a tmpfs: the pages are memory, no disk), named
``rpcp-<pid>-<16 hex digits>-<n>``: the process that created it, and the *sending* side's
tag on one connection, derived from that side's handshake nonce, so both ends of a
connection know the names either of them may create. A segment starts with a 64-byte header whose first word
says whether it is lent to the peer (``LENT``) or back with its owner (``FREE``); the data
follows at ``DATA_OFFSET``.

Lifecycle, so that memory is reused and nothing is left in ``/dev/shm``:

- the sender *lends* a segment: it takes a free one of its own of the right size (or creates
  one), marks it ``LENT``, copies the array into it, and puts only its name, dtype and
  shape in the message. A segment is backed by huge pages where the kernel allows
  (``MADV_COLLAPSE``, Linux 6.1): the sender then maps it for the copy only (one page-table
  entry per 2 MiB, so mapping costs next to nothing) and copies over threads; otherwise it
  writes with ``pwrite`` (the kernel copies; the sender never maps it);
- the receiver, when it decodes the message, maps the segment: the received array's
  memory, no copy. A huge-page segment's mapping goes with the array; a small-page one's
  is kept for the next time the segment comes, as filling its page tables costs as much as
  copying. When the last view of the array is garbage, the receiver marks the segment
  ``FREE`` again, and the sender may reuse it — its pages are already allocated, which is
  most of the cost of a fresh segment;
- a message that is never decoded (a response to a cancelled call, a frame dropped, a
  message that failed to decode) is given back by the receiver (``release_in``); an encode
  that fails halfway gives back what it lent (``discard_after``);
- a side keeps a few free segments for reuse (``KEEP_FREE``, at most ``KEEP_FREE_BYTES``)
  and unlinks the others; when a connection closes, **both** ends unlink every segment of
  **both** tags (``Segments.close``), so the side that survives a crash cleans up after the
  one that died.

This module needs no numpy: it deals in bytes and names only. Nor ``pathlib`` or
``ctypes`` at import (paths are strings; ``ctypes`` comes with the first mapping): every
process that speaks the RPC layer imports this module, and a worker's start-up is CPU bound.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import mmap
import os
import re
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any

import msgspec

SHM_DIRECTORY = "/dev/shm"
NAME_PATTERN = re.compile(r"rpcp-[0-9]+-([0-9a-f]{16})-[0-9]+")
SHARED = 2
"""The MessagePack extension code of an array in a segment (its header ends with the name)."""
DATA_OFFSET = 64
FREE, LENT = b"free\0\0\0\0", b"lent\0\0\0\0"
HUGE = b"huge\0\0\0\0"
"""The header's second word in a segment backed by huge pages (the receiver then maps it per
array instead of keeping the mapping)."""
KEEP_FREE = 4
KEEP_FREE_BYTES = 1 << 30
_PAGE = mmap.PAGESIZE
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
HUGE_PAGE = 2 << 20
"""A huge page (a PMD's span with 4 KiB pages); segments of huge pages are multiples of it."""
HUGE_MIN = 4 << 20
"""Segments for arrays of at least this many bytes get huge pages: below it the gain is small
(measured: equal at 1 MiB, 1.1-1.9x faster at 4 MiB, 2.5-3x from 16 MiB) and rounding up to
whole huge pages would waste more than half of the memory."""
_huge_pages: bool | None = None if _PAGE == 4096 else False
"""Whether huge-page segments work here: unknown until the first try; ``False`` once the
kernel refused (no ``MADV_COLLAPSE`` or ``MADV_POPULATE_WRITE`` before Linux 6.1, or
``shmem_enabled`` is ``deny``), so later segments do not ask again."""
COPY_THREADS = max(1, min(4, os.cpu_count() or 1))
COPY_PART = 4 << 20
"""A copy is split into parts of at least this many bytes, one per thread."""

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

    __slots__ = ("_created", "_guard", "_lent", "_own", "_peer", "_pool", "_writable", "closed",
                 "lent_bytes", "mapped_writes", "mark")

    def __init__(self, own_tag: str, peer_tag: str, *, mapped_writes: bool = False) -> None:
        self._own = own_tag
        self.mapped_writes = mapped_writes
        """Write through a mapping of the segment kept while it is in the pool (copies over
        threads, no page-table work after the first) rather than with ``pwrite``."""
        self._peer = peer_tag
        self.mark = 0
        """How many segments this side has lent: a connection notes it before encoding a
        message, and gives back what was lent since if the encoding fails (``discard_after``)."""
        self._created = 0  # names are never reused: a stale mapping must not free a new file
        self._pool: dict[str, tuple[int, bool]] = {}
        """name -> (capacity in data bytes, backed by huge pages), oldest first."""
        self._writable: dict[str, _Mapping] = {}
        """This side's segments mapped for writing, kept while they are in the pool."""
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

    def lend(self, data: memoryview, address: int) -> str:
        """The name of a segment holding ``data`` (bytes, at ``address`` in this process),
        marked lent; ``OSError`` if /dev/shm is full (then the array goes in band)."""
        size = data.nbytes
        with self._guard:
            if self.closed:
                raise SegmentError("the connection is closed")
            name = self._reusable(size)
            if name is None:
                name = self._create(size)
            huge = self._pool[name][1]
            mapped = self._writable.get(name) if self.mapped_writes else None
            try:
                if self.mapped_writes and mapped is None:
                    mapped = self._writable[name] = _Mapping(_path(name))
                elif huge and mapped is None:  # mapped for this copy only
                    mapped = _Mapping(_path(name), populate=False)
            except BaseException:
                give_back(name)
                raise
        try:
            if mapped is not None:  # a local reference: the mapping stays while we copy
                _copy(mapped.address + DATA_OFFSET, address, size)
                mapped.mark(LENT)
            else:
                _write(name, data)
        except BaseException:
            give_back(name)
            raise
        finally:
            if huge and not self.mapped_writes and mapped is not None:
                mapped.close()
        self.lent_bytes += size
        self.mark += 1
        self._lent.append((self.mark, name))
        return name

    def _reusable(self, size: int) -> str | None:
        """A free segment of this side that fits ``size`` without wasting half of it."""
        for name, (capacity, _) in self._pool.items():
            if size <= capacity <= 2 * size + HUGE_PAGE and _state(name) == FREE:
                return name
        return None

    def _create(self, size: int) -> str:
        self._trim(size)
        self._created += 1
        name = f"rpcp-{os.getpid()}-{self._own}-{self._created}"
        path = _path(name)
        length = DATA_OFFSET + size
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            huge = (size >= HUGE_MIN and _huge_pages is not False
                    and _back_with_huge_pages(fd, _huge_length(length)))
            if huge:
                length = _huge_length(length)
            # Allocated now: ENOSPC here, never SIGBUS on a later write.
            os.posix_fallocate(fd, 0, length)
            os.pwrite(fd, FREE + HUGE if huge else FREE, 0)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        self._pool[name] = (length - DATA_OFFSET, huge)
        return name

    def _trim(self, size: int) -> None:
        """Unlink free segments beyond ``KEEP_FREE`` / ``KEEP_FREE_BYTES`` (counting the one
        about to be made), oldest first."""
        free = [(name, capacity) for name, (capacity, _) in self._pool.items()
                if _state(name) == FREE]
        count, total = len(free) + 1, sum(c for _, c in free) + size
        for name, capacity in free:
            if count <= KEEP_FREE and total <= KEEP_FREE_BYTES:
                break
            del self._pool[name]
            self._writable.pop(name, None)
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
            self._writable.clear()  # a copy under way holds its own reference
            _peer_tags.discard(self._peer)
            _open.discard(self)
            tags = {self._own, self._peer}
            for name in _listed(lambda name: _tag_of_name(name) in tags):
                _unlink(name)
            for tag in tags:
                for name in [n for n in list(_mapped) if f"-{tag}-" in n]:
                    _mapped.pop(name, None)  # arrays still using one keep it mapped

    def __repr__(self) -> str:
        return f"<Segments own={self._own} peer={self._peer}{' closed' if self.closed else ''}>"


def _write(name: str, data: memoryview) -> None:
    """Write ``data`` into the segment ``name`` with ``pwrite`` and mark it lent."""
    fd = os.open(_path(name), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        written, size = 0, data.nbytes
        while written < size:  # (one call writes at most about 2 GiB)
            written += os.pwrite(fd, data[written:], DATA_OFFSET + written)
        os.pwrite(fd, LENT, 0)
    finally:
        os.close(fd)


def _copy(target: int, source: int, size: int) -> None:
    """Copy ``size`` bytes from ``source`` to ``target`` (addresses in this process), split
    over up to ``COPY_THREADS`` threads for large sizes (``ctypes.memmove`` releases the GIL)."""
    memmove = _native().memmove
    parts = max(1, min(COPY_THREADS, size // COPY_PART))
    if parts == 1:
        memmove(target, source, size)
        return
    step = -(-size // parts) + _PAGE - 1 & ~(_PAGE - 1)
    futures = [_copiers().submit(memmove, target + start, source + start,
                                 min(step, size - start))
               for start in range(step, size, step)]
    memmove(target, source, min(step, size))  # the first part in this thread
    for future in futures:
        future.result()


_copier_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _copiers() -> concurrent.futures.ThreadPoolExecutor:
    """The threads that copy parts of large arrays (made at the first large copy, so a fork
    template that sends nothing has no thread)."""
    global _copier_pool
    if _copier_pool is None:
        _copier_pool = concurrent.futures.ThreadPoolExecutor(
            COPY_THREADS - 1, thread_name_prefix="rpc_parallel-copy")
    return _copier_pool


def _forget_copiers() -> None:
    global _copier_pool
    _copier_pool = None  # a forked child has none of its parent's threads


os.register_at_fork(after_in_child=_forget_copiers)


def sweep_processes(pids: set[int]) -> None:
    """Unlink every segment the processes ``pids`` created: for a fork server whose children
    are about to die with it (and, once it is dead, for its master's)."""
    prefixes = tuple(f"rpcp-{pid}-" for pid in pids)
    for name in _listed(lambda name: name.startswith(prefixes)):
        _unlink(name)


def sweep_all() -> None:
    """Unlink the segments of every open connection of this process: for a process about
    to end without closing them (a worker whose master is gone). Any thread."""
    for segments in list(_open):
        segments.close()


def _path(name: str) -> str:
    return f"{SHM_DIRECTORY}/{name}"


def _listed(wanted: Callable[[str], bool]) -> list[str]:
    """The names in ``SHM_DIRECTORY`` that ``wanted`` accepts."""
    try:
        return [name for name in os.listdir(SHM_DIRECTORY) if wanted(name)]
    except FileNotFoundError:
        return []


def _tag_of_name(name: str) -> str | None:
    match = NAME_PATTERN.fullmatch(name)
    return None if match is None else match.group(1)


def _unlink(name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(name))


class _Mapping:
    """A segment mapped in this process, read and write, at an address aligned to a huge
    page (so that a huge-page segment is mapped with one page-table entry per 2 MiB).
    Unmapped by ``close`` or when the object is garbage: whoever uses the memory (a copy
    under way, an array through ``Lent``) holds a reference."""

    __slots__ = ("address", "huge", "size")

    def __init__(self, path: str, *, populate: bool | None = None) -> None:
        """``populate``: fill the page tables now (default: unless the segment is backed by
        huge pages, whose entries are few and cheap to fill as the memory is used)."""
        self.address = 0
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            self.size = os.fstat(fd).st_size
            self.huge = os.pread(fd, 16, 0)[8:] == HUGE
            self.address = _map(fd, self.size, populate=not self.huge if populate is None
                                else populate)
        finally:
            os.close(fd)

    def state(self) -> bytes:
        """The segment's state word (``LENT`` or ``FREE``)."""
        return _native().string_at(self.address, 8)

    def mark(self, word: bytes) -> None:
        """Write the segment's state word."""
        _native().memmove(self.address, word, 8)

    def close(self) -> None:
        address, self.address = self.address, 0
        if address:
            _native().munmap(address, self.size)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # (at interpreter exit the module may be gone)
            self.close()


class _Native:
    """The C library's ``mmap``, ``munmap`` and ``madvise`` (Python's ``mmap`` module cannot
    choose the address), with ``ctypes`` helpers. Made at the first mapping: most processes
    never map a segment, and ``ctypes`` costs a worker's start-up."""

    PROT_NONE, PROT_READ_WRITE = 0, 3
    MAP_SHARED, MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 1, 2, 0x10, 0x20, 0x4000
    MADV_POPULATE_WRITE, MADV_COLLAPSE = 23, 25

    def __init__(self) -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self.mmap = libc.mmap
        self.mmap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        self.munmap = libc.munmap
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.madvise = libc.madvise
        self.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self.failed = ctypes.c_void_p(-1).value
        self.get_errno = ctypes.get_errno
        self.memmove = ctypes.memmove
        self.string_at = ctypes.string_at


_native_calls: _Native | None = None


def _native() -> _Native:
    global _native_calls
    if _native_calls is None:
        _native_calls = _Native()
    return _native_calls


def _map(fd: int, length: int, *, populate: bool) -> int:
    """Map ``length`` bytes of ``fd`` shared, read and write, at an address aligned to
    ``HUGE_PAGE``: a span that large is reserved, the file mapped over its aligned part, the
    rest given back."""
    native = _native()
    span = length + HUGE_PAGE
    reserved = native.mmap(None, span, native.PROT_NONE,
                           native.MAP_PRIVATE | native.MAP_ANONYMOUS | native.MAP_NORESERVE,
                           -1, 0)
    if reserved in (None, native.failed):
        raise _errno_error(native, "reserving address space for a segment")
    start: int = -(-reserved // HUGE_PAGE) * HUGE_PAGE
    flags = native.MAP_SHARED | native.MAP_FIXED | (_POPULATE if populate else 0)
    if native.mmap(start, length, native.PROT_READ_WRITE, flags, fd, 0) != start:
        error = _errno_error(native, "mapping a segment")
        native.munmap(reserved, span)
        raise error
    end = start + -(-length // _PAGE) * _PAGE
    if start > reserved:
        native.munmap(reserved, start - reserved)
    if reserved + span > end:
        native.munmap(end, reserved + span - end)
    return start


def _errno_error(native: _Native, doing: str) -> OSError:
    number = native.get_errno()
    return OSError(number, f"{doing}: {os.strerror(number)}")


def _huge_length(length: int) -> int:
    return -(-length // HUGE_PAGE) * HUGE_PAGE


def _back_with_huge_pages(fd: int, length: int) -> bool:
    """Give the new, empty file ``fd`` a size of ``length`` (a multiple of ``HUGE_PAGE``)
    backed by huge pages, if the kernel will. Then the pages cost one page-table entry per
    2 MiB wherever the file is mapped, and copying into a fresh mapping runs at the speed of
    memory. ``False``, and the file is empty again, if the kernel cannot."""
    global _huge_pages
    os.ftruncate(fd, length)
    if _collapse(fd, length):
        _huge_pages = True
        return True
    os.ftruncate(fd, 0)  # the pages touched go; the caller allocates small ones
    if not _huge_pages and not _collapse_works():
        _huge_pages = False  # for good: the kernel lacks the calls, or denies huge pages
    return False


def _collapse(fd: int, length: int) -> bool:
    """Touch one page in each 2 MiB of ``fd``, then have ``MADV_COLLAPSE`` make each 2 MiB
    one huge page. On tmpfs this works whatever ``shmem_enabled`` says unless it is
    ``deny`` (Linux 6.1 and later); it fails on a full /dev/shm too, with the same error."""
    native = _native()
    try:
        address = _map(fd, length, populate=False)
    except OSError:
        return False
    try:
        return all(
            native.madvise(address + offset, _PAGE, native.MADV_POPULATE_WRITE) == 0
            for offset in range(0, length, HUGE_PAGE)
        ) and native.madvise(address, length, native.MADV_COLLAPSE) == 0
    finally:
        native.munmap(address, length)


def _collapse_works() -> bool:
    """Whether this kernel makes huge pages of shared memory at all: tried on one huge page
    of a ``memfd`` (memory that /dev/shm's size does not limit), once a segment failed."""
    fd = os.memfd_create("rpc_parallel-probe", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, HUGE_PAGE)
        return _collapse(fd, HUGE_PAGE)
    finally:
        os.close(fd)


_mapped: dict[str, _Mapping] = {}
"""Small-page segments of peers mapped here, by name: mapped once, reused each time one
comes again (a huge-page segment is mapped per array: that costs next to nothing)."""


class Lent:
    """The memory of one received array: numpy reads it through ``__array_interface__`` and
    keeps this object as the array's base, so it lives as long as any view of the array;
    then the segment is given back."""

    __slots__ = ("__array_interface__", "__weakref__", "_mapping")  # (keeps the mapping)

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
        if not os.path.exists(_path(name)):
            _mapped.pop(name, None)


def _state(name: str) -> bytes | None:
    try:
        fd = os.open(_path(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, 8, 0)
    finally:
        os.close(fd)


def give_back(name: str) -> None:
    """Mark the segment ``name`` free for its owner to reuse (if it still exists)."""
    with contextlib.suppress(FileNotFoundError):
        fd = os.open(_path(name), os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.pwrite(fd, FREE, 0)
        finally:
            os.close(fd)


def _checked(name: str) -> str:
    match = NAME_PATTERN.fullmatch(name)
    if match is None:
        raise SegmentError(f"{name!r} is not the name of an rpc_parallel segment")
    if match.group(1) not in _peer_tags:
        raise SegmentError(
            f"shared-memory segment {name} is not from the peer of an open connection between "
            "processes of this host"
        )
    return _path(name)


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
        if not mapped.huge:  # kept: its page tables cost as much as a copy to fill again
            _mapped[name] = mapped
    if mapped.size < DATA_OFFSET + size:
        raise SegmentError(f"shared-memory segment {name} holds {mapped.size} bytes, "
                           f"not {DATA_OFFSET + size}")
    if mapped.state() != LENT:
        raise SegmentError(f"shared-memory segment {name} is not lent (a stale message?)")
    lent = Lent(mapped, size)
    weakref.finalize(lent, _returned, mapped)  # then a huge-page mapping goes with it
    return lent


def _returned(mapping: _Mapping) -> None:
    if mapping.address:  # (not unmapped)
        mapping.mark(FREE)


def release(name: str) -> None:
    """Give back the segment ``name`` of a message that will not be decoded."""
    with contextlib.suppress(SegmentError):
        give_back(os.path.basename(_checked(name)))


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
