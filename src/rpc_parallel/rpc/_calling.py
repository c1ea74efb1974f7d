"""The calling side of a connection: calls in flight and their errors.

``Calling`` (a connection's calling side: its calls in flight, streams whose reader was
dropped, the one-way window, how calls fail when the connection is lost, a reverse pipe's
sender); ``RpcCall`` (a tuple) / ``ReversePipeCall`` are what ``Calling.outgoing`` holds for
an rpc or a reverse pipe (a pipe or state call is its ``ReaderState``); ``error_from_info`` turns an
ERROR frame into the exception a call fails with; ``cannot_send`` names a value that cannot
be encoded or is too large. Imports nothing of ``connection``: ``Calling`` knows it as a
``CallingOwner``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from typing import Any, Protocol

from ._exceptions import rebuild
from ._segments import release_in
from .errors import CloseKind, ConnectionClosed, MessageTooLarge, ProtocolError
from .frames import END, ErrorInfo
from .functions import ENCODER, FunctionSpec
from .streams import Credit, ReaderState, StreamOwner

RpcCall = tuple[FunctionSpec, "asyncio.Future[Any]"]
"""An rpc call in flight, as ``Calling.outgoing`` holds it: its function's spec (what
decodes the result) and the future of its result. A tuple, not an object: it is made for
every call, and a tuple costs the per-call path least. ``spec_of`` and ``fail`` treat it
like the other entries."""


def on_rpc_response(spec: FunctionSpec, future: asyncio.Future[Any], payload: memoryview) -> None:
    """An rpc call's RESPONSE when its payload must be copied first (the connection decodes
    the others inline, and the answer of a call its caller cancelled too: its arrays go
    back as garbage)."""
    if future.done():  # Cancelled by its caller: give back the arrays the answer lends.
        release_in(payload)
        return
    try:
        future.set_result(spec.decode_response(payload))
    except ProtocolError as error:
        future.set_exception(error)


def failed_to_decode(
    spec: FunctionSpec, future: asyncio.Future[Any], error: Exception, payload: memoryview
) -> None:
    """An rpc call's RESPONSE did not decode: fail the call (unless its caller has cancelled
    it), and give back the segments the payload names."""
    failure = spec.decode_failure(error, payload)
    if not future.done():
        future.set_exception(failure)


def spec_of(entry: Any) -> FunctionSpec:
    """The spec of a call in flight, whatever its kind."""
    return entry[0] if type(entry) is tuple else entry.spec  # type: ignore[no-any-return]


def fail(entry: Any, error: BaseException) -> None:
    """Fail a call in flight, whatever its kind, unless it has finished."""
    if type(entry) is tuple:
        future = entry[1]
        if not future.done():
            future.set_exception(error)
    else:
        entry._fail(error)


class ReversePipeCall:
    """A reverse pipe call in flight: the future of its result and its sender's credit."""

    __slots__ = ("credit", "future", "spec")

    def __init__(self, spec: FunctionSpec, future: asyncio.Future[Any], credit: Credit) -> None:
        self.spec = spec
        self.future = future
        self.credit = credit

    def _on_response(self, payload: memoryview) -> None:
        future = self.future
        if future.done():
            release_in(payload)
        else:
            try:
                future.set_result(self.spec.decode_response(payload))
            except ProtocolError as error:
                future.set_exception(error)

    def _fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def error_from_info(spec: FunctionSpec, info: ErrorInfo) -> Exception:
    if info.kind == "protocol":
        return ProtocolError(info.message)
    return rebuild(spec.name, info.qualified_type or info.type_name, info.message, info.traceback,
                   info.args, info.attributes)


UNSENDABLE = {"arguments": ("the arguments", "arguments"), "item": ("a stream item",) * 2,
               "result": ("the result", "the result")}

UNENCODABLE = (TypeError, MessageTooLarge, OverflowError, UnicodeEncodeError, RecursionError)
"""What encoding a value may raise: a type the codecs do not know, a message over the limit,
an int over 64 bits, a lone surrogate in a ``str``, nesting deeper than the encoder allows."""


def cannot_send(
    spec: FunctionSpec,
    what: str,
    error: BaseException,
    serving: bool = False,
    arguments: tuple[Any, ...] | None = None,
) -> ProtocolError:
    """The error for a value of a call of ``spec`` that cannot be encoded or is too large
    (``what``: arguments, item, result). The caller's side keeps ``MessageTooLarge``; the
    serving side reports a ``ProtocolError`` to the peer. Given the bound ``arguments``, the
    first parameter whose value cannot be encoded is named."""
    long, short = UNSENDABLE[what]
    reason = _reason(error)
    if isinstance(error, MessageTooLarge) and not serving:
        return MessageTooLarge(f"{spec.name}: {short}: {reason}")
    if arguments is not None and not isinstance(error, MessageTooLarge):
        for parameter, value in zip(spec.parameters, arguments, strict=False):
            try:
                ENCODER.encode(value)
            except UNENCODABLE:
                reason = f"parameter {parameter.name!r}: {reason}"
                break
    return ProtocolError(f"{spec.name}: {long} cannot be sent: {reason}")


def _reason(error: BaseException) -> str:
    if isinstance(error, OverflowError):
        return f"an int out of the 64-bit range ({error})"
    if isinstance(error, UnicodeEncodeError):
        return f"a str that is not valid Unicode (a lone surrogate at position {error.start})"
    if isinstance(error, RecursionError):
        return "a value nested deeper than the encoder allows"
    return str(error)


ONE_WAY_WINDOW = 1024
"""One-way calls a caller may have sent and not yet seen finished, per connection: the
serving side acknowledges each one-way call when it has finished (CREDIT on call id 0, the
argument counting them), and ``one_way`` waits while this many are unacknowledged. So a
slow one-way function holds at most this many calls in progress on the serving side."""


class OneWayWindow:
    """The calling side's count of one-way calls sent and not yet acknowledged."""

    __slots__ = ("_loop", "_room", "unacknowledged")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.unacknowledged = 0
        self._room: asyncio.Future[None] | None = None  # Set when some are acknowledged.

    @property
    def full(self) -> bool:
        return self.unacknowledged >= ONE_WAY_WINDOW

    async def wait(self) -> None:
        """Return once some calls are acknowledged (or the connection closes)."""
        if self._room is None:
            self._room = self._loop.create_future()
        await asyncio.shield(self._room)

    def acknowledged(self, count: int) -> None:
        """The peer has finished ``count`` one-way calls (0 on close: wake the waiters)."""
        self.unacknowledged = max(0, self.unacknowledged - count)
        room = self._room
        if room is not None:
            self._room = None
            if not room.done():
                room.set_result(None)


Translate = Callable[[Any, ConnectionClosed], Awaitable[Callable[[str], BaseException]]]
"""``TranslateClosed`` (``connection``) as the calling side sees it."""


class CallingOwner(StreamOwner, Protocol):
    """What the calling side needs of its connection (``Connection``)."""

    _close_reason: str | None

    def _write(self, message_type: int, call_id: int, argument: int, value: Any = ...) -> int:
        """Append one frame to the outgoing buffer; return the payload size."""
        ...

    async def _send_item(
        self, spec: FunctionSpec, call_id: int, item: Any, credit: Credit, serving: bool = False
    ) -> bool:
        """Send one stream item once credit allows; False if the stream has stopped."""
        ...


class Calling:
    """The calling side of one connection: the calls it has in flight.

    ``outgoing`` maps each call id to its ``RpcCall``, ``ReversePipeCall`` or
    ``ReaderState``; the connection reads and fills it on the per-frame and per-call paths,
    so it is one dict for the connection's life, never replaced (as is ``dropped``).
    """

    __slots__ = ("_owner", "_translate", "_translating", "dropped", "one_way", "outgoing")

    def __init__(self, owner: CallingOwner, translate: Translate | None) -> None:
        self._owner = owner
        self._translate = translate
        self._translating: asyncio.Task[None] | None = None
        self.outgoing: dict[int, Any] = {}
        self.dropped: list[ReaderState] = []
        """Streams whose reader was garbage collected: aborted before the next call is sent."""
        self.one_way = OneWayWindow(owner.loop)

    async def translate_closed(self, error: ConnectionClosed, function: str) -> BaseException:
        """The error a call of ``function`` fails with when the connection ends with ``error``."""
        if self._translate is None:
            return error
        return (await self._translate(self._owner, error))(function)

    def reader_dropped(self, state: ReaderState) -> None:
        """Called by the garbage collector (any thread, possibly in the middle of a write):
        only note it, and have the loop abort the stream; a call sent before then aborts it
        first (so the peer sees the ABORT before anything sent after the drop)."""
        self.dropped.append(state)
        with contextlib.suppress(RuntimeError):  # A closed loop: nothing is left to free.
            self._owner.loop.call_soon_threadsafe(self.abort_dropped)

    def abort_dropped(self) -> None:
        dropped = self.dropped
        while dropped:
            dropped.pop()._abort()

    def fail_all(self, reason: str, kind: CloseKind) -> None:
        """The connection closed: fail every call in flight with ``ConnectionClosed``, or
        with what the layer above's ``translate_closed`` makes of it."""
        self.one_way.acknowledged(0)  # A waiting one_way() sees the connection closed.
        entries = list(self.outgoing.values())
        self.outgoing.clear()
        translated = []
        for entry in entries:
            if type(entry) is ReversePipeCall:
                entry.credit.stop()
            if self._translate is not None and type(entry) is not ReaderState:
                translated.append(entry)
            else:
                fail(entry, ConnectionClosed(reason, kind))
        if translated:
            self._translating = self._owner.loop.create_task(
                self._fail_translated(translated, ConnectionClosed(reason, kind))
            )

    async def _fail_translated(self, calls: list[Any], error: ConnectionClosed) -> None:
        """Fail calls in flight with the error the layer above makes of the lost connection."""
        assert self._translate is not None
        try:
            make = await self._translate(self._owner, error)
        except BaseException:
            for call in calls:
                fail(call, ConnectionClosed(error.reason, error.kind))
            raise
        for call in calls:
            fail(call, make(spec_of(call).name))

    async def pump(
        self,
        spec: FunctionSpec,
        call_id: int,
        stream: AsyncIterable[Any] | Iterable[Any],
        credit: Credit,
        future: asyncio.Future[Any],
    ) -> None:
        """Send a reverse pipe's items as credit allows, then END."""
        owner = self._owner
        try:
            if isinstance(stream, AsyncIterable):
                async for item in stream:
                    if not await owner._send_item(spec, call_id, item, credit):
                        return
            else:
                for item in stream:
                    if not await owner._send_item(spec, call_id, item, credit):
                        return
            if not credit.stopped and owner._close_reason is None:
                owner._write(END, call_id, 0)
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except BaseException as error:
            # The caller's stream failed: stop the remote call and fail this one.
            if call_id in self.outgoing:
                owner.abandon(call_id)
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
        finally:
            await _close_stream(stream)


async def _close_stream(stream: Any) -> None:
    """Close a reverse pipe's stream the call took (its ``finally`` runs now, not whenever the
    garbage collector gets to it): the call is over, however it ended."""
    try:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
    except Exception:  # Already running elsewhere, or its finally failed: not this call's.
        pass
