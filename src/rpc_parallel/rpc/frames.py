"""Frame layout: every message on the wire is one frame.

    offset  size  field
    0       4     length of the rest of the frame (little-endian u32) = 9 + payload size
    4       1     message type
    5       4     call id (u32; 0 for connection-level messages)
    9       4     argument (u32): function index for QUERY, byte credit for CREDIT, else 0
    13      ...   payload: msgpack (may be empty)
"""

from __future__ import annotations

import struct
import traceback
from typing import Literal

import msgspec

from ._exceptions import describe

HEADER = struct.Struct("<IBII")
HEADER_SIZE = HEADER.size  # 13
LENGTH_OVERHEAD = HEADER_SIZE - 4  # counted in the length field

MAGIC = "rpc_parallel"
PROTOCOL_VERSION = 1

# Handshake (before authentication).
HELLO = 1
AUTH = 2
MENU = 3
# Calls.
QUERY = 4
RESPONSE = 5
ERROR = 6
ITEM = 7
END = 8
ABORT = 9
CREDIT = 10
# Connection.
HEARTBEAT = 11
CLOSE = 12



class Hello(msgspec.Struct, array_like=True, frozen=True):
    magic: str
    version: int
    nonce: bytes


class MenuEntry(msgspec.Struct, array_like=True, frozen=True):
    name: str
    version: int
    kind: str
    digest: str
    signature: str


class ErrorInfo(msgspec.Struct, array_like=True, frozen=True):
    """An exception as it crosses the wire: the answer to a call that raised, and (in the
    worker layer) a failure a worker reports. ``kind`` is "remote" or "protocol".

    The last three fields came later (a peer without them sends none: the defaults):
    ``qualified_type`` is ``module.Qualname`` (builtins by bare name), ``args`` the
    exception's ``args`` and ``attributes`` its public attributes, msgpack-encoded (``b""``
    when they cannot be sent). ``rpc/_exceptions.py`` makes and reads them."""

    kind: Literal["remote", "protocol"]
    type_name: str
    message: str
    traceback: str
    qualified_type: str = ""
    args: bytes = b""
    attributes: bytes = b""


def remote_error_info(error: BaseException) -> ErrorInfo:
    """``error`` as an implementation's failure, with its traceback text."""
    return ErrorInfo(
        "remote",
        type(error).__qualname__,
        str(error),
        "".join(traceback.format_exception(type(error), error, error.__traceback__)),
        *describe(error),
    )


HELLO_DECODER = msgspec.msgpack.Decoder(Hello)
AUTH_DECODER = msgspec.msgpack.Decoder(bytes)
MENU_DECODER = msgspec.msgpack.Decoder(list[MenuEntry])
ERROR_DECODER = msgspec.msgpack.Decoder(ErrorInfo)
REASON_DECODER = msgspec.msgpack.Decoder(str)
