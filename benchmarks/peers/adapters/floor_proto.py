"""The floor's wire format: a 4-byte little-endian length, then a msgpack body (msgspec).

Requests are ``(id, op, value)``, replies ``(id, value)``. Kept tiny on purpose: this is what a
hand-written asyncio protocol costs, the Python limit that any RPC layer adds to.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, cast

import msgspec

HEADER = struct.Struct("<I")
OP_INC = 0
OP_ECHO = 1
OP_MAP = 2  # a list of ints, each incremented

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def frame(obj: object) -> bytearray:
    """Encode ``obj`` after a length header, in one buffer (a single copy of a large payload)."""
    buf = bytearray(HEADER.size)
    _encoder.encode_into(obj, buf, HEADER.size)
    HEADER.pack_into(buf, 0, len(buf) - HEADER.size)
    return buf


class FrameProtocol(asyncio.Protocol):
    """Splits the byte stream into frames and hands each decoded body to ``message``."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        size = len(buf)
        pos = 0
        view = memoryview(buf)
        while size - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            end = pos + HEADER.size + length
            if end > size:
                break
            self.message(_decoder.decode(view[pos + HEADER.size : end]))
            pos = end
        view.release()
        if pos:
            del buf[:pos]

    def send(self, obj: object) -> None:
        if self.transport is None:
            raise ConnectionError("not connected")
        self.transport.write(frame(obj))

    def message(self, msg: Any) -> None:
        raise NotImplementedError
