"""The buffers large frames are received into, kept for reuse (decision 0022).

A frame larger than the connection's receive buffer is read into a ``FrameBuffer`` of its
own; an array that makes up most of the frame uses it as its memory (``_arrays.from_ext``).
No import of the package: the connection and the array codec both use this module.
"""

from __future__ import annotations

import mmap
import os
import threading


class FrameBuffer(mmap.mmap):
    """The buffer a large frame is received into: an anonymous mapping of the frame's size,
    whose pages the kernel allocates as bytes arrive (an announced length costs no memory
    until the bytes come). An array decoded from the frame may use it as its memory instead
    of a copy (``_arrays.from_ext``); it then sets ``viewed`` and the connection does not
    reuse the buffer for the next frame."""

    viewed = False
    frame_size = 0
    """The size of the frame it holds (it may be larger: reused for a smaller frame)."""


KEEP_BUFFERS = 2
KEEP_BUFFER_BYTES = 256 * 1024 * 1024
_free_buffers: list[FrameBuffer] = []
"""Frame buffers whose frames are done, kept for the next large frames of any connection:
their pages are already in place (a fresh 64 MiB takes 30-45 ms of page faults here,
rewriting one 2 ms)."""
_free_lock = threading.RLock()
"""Re-entrant: a garbage collection while it is held may run an array's finalizer, which
gives a buffer back (``give_back_buffer``) in the same thread."""


def take_buffer(size: int) -> FrameBuffer:
    """A buffer for a frame of ``size`` bytes: a kept one that fits (at most twice as large),
    else a new mapping."""
    with _free_lock:
        fitting = [b for b in _free_buffers if size <= len(b) <= 2 * size]
        buffer = min(fitting, key=len) if fitting else None
        if buffer is not None:
            _free_buffers[:] = [b for b in _free_buffers if b is not buffer]
    if buffer is None:
        buffer = FrameBuffer(-1, size)
    buffer.viewed = False
    buffer.frame_size = size
    return buffer


def give_back_buffer(buffer: FrameBuffer) -> None:
    """``buffer``'s frame is done (decoded, or the array using it is garbage): keep it for a
    later frame, within ``KEEP_BUFFERS`` / ``KEEP_BUFFER_BYTES`` (the oldest go)."""
    with _free_lock:
        if any(b is buffer for b in _free_buffers):
            return
        _free_buffers.append(buffer)
        while (len(_free_buffers) > KEEP_BUFFERS
               or sum(len(b) for b in _free_buffers) > KEEP_BUFFER_BYTES):
            del _free_buffers[0]  # unmapped once nothing uses it


def _forget_buffers() -> None:
    global _free_lock
    _free_lock = threading.RLock()  # a forked child: no other thread holds it
    _free_buffers.clear()


os.register_at_fork(after_in_child=_forget_buffers)
