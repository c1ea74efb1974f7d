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


ERROR_TEXT_LIMIT = 1024 * 1024
"""The most characters of a message (and of a traceback) an error record carries by default;
the connection lowers it to fit its ``max_message_size``."""


def text_limit(max_message_size: int) -> int:
    """The characters each text of an error record may have so that the record fits a
    message of ``max_message_size`` bytes (two texts of up to 4 bytes a character, the
    encoded args and attributes up to as many bytes as characters, room for the rest)."""
    return max(64, min(ERROR_TEXT_LIMIT, (max_message_size - 2048) // 10))


def safe_text(text: str, limit: int = ERROR_TEXT_LIMIT, *, keep_end: bool = False) -> str:
    """``text`` as valid UTF-8 of at most about ``limit`` characters: lone surrogates (a
    file name ``os.listdir`` could not decode) escaped as ``\\udcXX``, and the middle or
    the end cut, saying how much was cut. ``keep_end`` keeps the end (a traceback's last
    lines say the most)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    cut = f"... [{len(text) - limit} characters cut] ..."
    return cut + text[-limit:] if keep_end else text[:limit] + cut


def text_of(error: BaseException) -> str:
    """``str(error)``, or what can be said of it when its ``__str__`` raises."""
    try:
        return str(error)
    except Exception as failure:  # A user's __str__ may raise anything.
        try:
            args = repr(error.args)
        except Exception:
            args = "(unprintable)"
        return f"<str() failed: {type(failure).__name__}> args={args}"


def _traceback_text(error: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(type(error), error, error.__traceback__))
    except Exception as failure:  # An exception that cannot even be formatted.
        return f"(the traceback could not be formatted: {type(failure).__name__})"


def remote_error_info(error: BaseException, limit: int = ERROR_TEXT_LIMIT) -> ErrorInfo:
    """``error`` as an implementation's failure, with its traceback text; always encodable:
    each text is made safe (``safe_text``) and at most about ``limit`` characters, and its
    encoded ``args`` and attributes are left out when they exceed ``limit`` bytes."""
    try:
        qualified, args, attributes = describe(error)
    except Exception:  # Whatever a user's exception does, its text still goes.
        qualified, args, attributes = "", b"", b""
    if len(args) + len(attributes) > limit:
        args = attributes = b""
    return ErrorInfo(
        "remote",
        safe_text(type(error).__qualname__, 200),
        safe_text(text_of(error), limit),
        safe_text(_traceback_text(error), limit, keep_end=True),
        safe_text(qualified, 1000),
        args,
        attributes,
    )


HELLO_DECODER = msgspec.msgpack.Decoder(Hello)
AUTH_DECODER = msgspec.msgpack.Decoder(bytes)
MENU_DECODER = msgspec.msgpack.Decoder(list[MenuEntry])
ERROR_DECODER = msgspec.msgpack.Decoder(ErrorInfo)
REASON_DECODER = msgspec.msgpack.Decoder(str)
