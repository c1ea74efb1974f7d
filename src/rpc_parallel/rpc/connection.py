"""One authenticated, multiplexed RPC connection (either end): the per-frame path.

The protocol object receives and dispatches frames, writes them, and starts calls; each other
concern is a part it owns, in a module of its own: ``Handshake`` (``_handshake``: the steps
before the connection is live), ``Serving`` (``_serving``: the peer's calls, served),
``Liveness`` (``_liveness``: heartbeats and stalls) and ``Calling`` (``_calling``: the calls
in flight, how they fail when the connection is lost). ``close()`` ends all of them; ``wait_closed()`` returns once they have
ended. The parts know the connection only through small owner protocols, so none of them
imports this module.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import socket
import threading
from collections.abc import (
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from typing import Any, TypeVar

import msgspec

from . import _segments, frames
from ._calling import (
    ONE_WAY_WINDOW,
    UNENCODABLE,
    Calling,
    ReversePipeCall,
    cannot_send,
    error_from_info,
    fail,
    failed_to_decode,
    on_rpc_response,
    spec_of,
)
from ._frame_buffers import FrameBuffer, give_back_buffer, take_buffer
from ._handshake import Handshake, HandshakeViolation
from ._liveness import Liveness
from ._serving import FLUSH_AT, ZERO_HEADER, Implementation, ServedStream, Serving
from .errors import (
    CloseKind,
    ConnectionClosed,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
)
from .frames import (
    ABORT,
    AUTH,
    CLOSE,
    CREDIT,
    END,
    ERROR,
    HEADER,
    HEADER_SIZE,
    HEARTBEAT,
    HELLO,
    ITEM,
    LENGTH_OVERHEAD,
    MENU,
    QUERY,
    RESPONSE,
    MenuEntry,
)
from .functions import FunctionSpec, make_encoder
from .settings import ENVELOPE, PREAUTH_MAX_MESSAGE_SIZE, RpcSettings
from .streams import ITEM_OVERHEAD, Credit, PipeReader, ReaderState

__all__ = ["ONE_WAY_WINDOW", "Connection", "TranslateClosed", "current_connection"]

T = TypeVar("T")

TranslateClosed = Callable[
    ["Connection", ConnectionClosed], Awaitable[Callable[[str], BaseException]]
]
"""Given the connection and the error its loss makes, the error each call in flight fails
with, from the function's name. A layer above passes one to the constructor (or ``connect_*``) to turn
a lost connection into its own error (the worker layer's ``WorkerDied``)."""

current_connection: contextvars.ContextVar[Connection] = contextvars.ContextVar(
    "rpc_parallel_current_connection"
)
"""The connection whose call the running implementation is serving."""

_RECEIVE_BUFFER_SIZE = 256 * 1024
_PREAUTH_BUFFER_SIZE = 2 * PREAUTH_MAX_MESSAGE_SIZE
"""Until the peer has authenticated, the receive buffer is this small (no frame may be
larger than ``PREAUTH_MAX_MESSAGE_SIZE`` then): a pending connection costs a few KiB."""
_LARGE_FRAME = _RECEIVE_BUFFER_SIZE // 2
_FLUSH_AT = FLUSH_AT
CALLS_PER_WRITE = 128
"""Calls started back to back are written to the socket at least every this many
(decision 0032): the peer starts serving the first ones while this side is still making the
rest, so with many calls in flight the two processes work at once instead of taking turns.
A power of two: the test is on the call id, which grows by 2 a call."""
_WRITE_MASK = CALLS_PER_WRITE - 1
CALL_WRITE_BYTES = 64 * 1024
"""Calls are also written once the outgoing buffer holds this many bytes (answers wait for
``FLUSH_AT``, 256 KiB, or the end of the read), so the first of a run of large calls (a
map's batches) is being served while the rest are encoded (decision 0032)."""
_ZERO_HEADER = ZERO_HEADER
_NO_PAYLOAD: Any = object()
_Future = asyncio.Future  # What loop.create_future() makes (uvloop's too), without the call.


class _AfterRead:
    """The flush handle while ``buffer_updated`` dispatches what it read: frames written
    then leave in one write at its end, so they need no ``call_soon`` (and no cancel)."""

    __slots__ = ()

    def cancel(self) -> None:
        pass


_AFTER_READ: Any = _AfterRead()


class Connection(asyncio.BufferedProtocol):
    """Either end of an RPC connection; obtained from ``connect_*`` or a ``Server``."""

    def __init__(
        self,
        *,
        secret: bytes,
        implementations: Sequence[Implementation] = (),
        settings: RpcSettings | None = None,
        is_client: bool,
        on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None = None,
        on_ready: Callable[[Connection], None] | None = None,
        translate_closed: TranslateClosed | None = None,
        on_made: Callable[[Connection], None] | None = None,
    ) -> None:
        """``on_made`` runs when the transport is up (for TLS: after the TLS handshake),
        ``on_ready`` once the peer has authenticated and sent its menu."""
        if not secret:
            raise ValueError("a connection needs a non-empty secret")
        self.loop = asyncio.get_running_loop()
        self.thread = threading.get_ident()
        """The thread whose running ``loop`` made the connection (read only)."""
        self.pid = os.getpid()
        """The process that made it (read only): a forked child's copy is not its own."""
        self.settings = settings or RpcSettings()
        self.is_client = is_client
        self.user_data: Any = None
        """Free for the layer above (the worker layer keeps connection state here)."""
        self.peer_menu: dict[str, MenuEntry] = {}
        self._on_ready = on_ready
        self._on_made = on_made
        self._transport: asyncio.Transport | None = None
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._handshake = Handshake(secret, is_client)
        self._liveness = Liveness(self)
        self._received = False  # Anything read since the last heartbeat tick (_liveness).
        self._init_calling(translate_closed)
        self._init_sending()
        self._init_receiving()
        self._init_closing()
        context = contextvars.copy_context()
        context.run(current_connection.set, self)
        self._serving = Serving(self, list(implementations), context, on_one_way_error)
        # The per-frame path reaches the serving side without a hop: its dict and its entry
        # (bound once the handshake is done).
        self._incoming = self._serving.incoming
        self._leave = self._serving.leave
        # A QUERY frame goes to _on_query when it comes alone (a large frame), a run of them
        # in the receive buffer to _serve_queries (both refuse calls until the handshake is
        # done, then are the serving side's).
        self._on_query: Callable[[int, int, memoryview], None] = self._query_too_early
        self._serve_queries: Callable[[memoryview, int, int, int], int] = self._queries_too_early

    def _init_calling(self, translate_closed: TranslateClosed | None) -> None:
        """The calls this side makes: ids, the peer's menu positions, the calling side."""
        self._peer_index: dict[FunctionSpec, int] = {}
        self._rpc_index: dict[FunctionSpec, int] = {}
        """Of ``_peer_index``, the rpc functions, for ``call_future``; emptied on close (so
        its one look-up also finds a closed connection)."""
        self._peer_positions: dict[tuple[str, int], int] = {}
        self._next_id = 1 if self.is_client else 2
        self.started_id = 0
        """The id of the call ``call_future`` started last (read only; for ``abandon``)."""
        self._id_parity = 1 if self.is_client else 0
        calling = self._calling = Calling(self, translate_closed)
        # The per-frame and per-call paths reach the calling side without a hop.
        self._outgoing = calling.outgoing
        self._dropped = calling.dropped
        self._abort_dropped = calling.abort_dropped
        self._one_way = calling.one_way
        self._one_way_acknowledged = calling.one_way.acknowledged

    def _init_sending(self) -> None:
        """The outgoing buffer, its flush, and the transport's pause-writing signal."""
        self._out = bytearray()
        self._deferred: list[tuple[bytes, memoryview]] = []
        """Arrays the encoder left for ``_splice`` to copy into the frame being written."""
        self._encoder = make_encoder(None, self._deferred)
        self._segments: _segments.Segments | None = None
        """Shared memory for large arrays, on a connection between processes of one host
        (decision 0022); set once the peer has authenticated."""
        self._flush_handle: asyncio.Handle | None = None
        self._writable: asyncio.Future[None] | None = None
        self.writing_paused = False
        """True while the transport's buffer is over its high-water mark (read only):
        senders then ``await wait_writable()``, as ``call`` does after ``start_call``."""
        self._send_limit = self.settings.max_message_size + ENVELOPE
        self._error_text_limit = frames.text_limit(self.settings.max_message_size)

    def _init_receiving(self) -> None:
        """The receive buffer and the state of a large frame being read."""
        self._buffer = bytearray(_PREAUTH_BUFFER_SIZE)  # Grown once authenticated (_compact).
        self._capacity = _PREAUTH_BUFFER_SIZE
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._large: memoryview | None = None
        self._large_buffer: FrameBuffer | None = None  # What _large is a view of.
        self._large_header: tuple[int, int, int] = (0, 0, 0)
        self._large_filled = 0
        self._large_size = 0  # The whole frame's payload; _large holds what has arrived.
        self._limit = PREAUTH_MAX_MESSAGE_SIZE

    def _init_closing(self) -> None:
        """Why and how the connection closed, and the futures that tell it."""
        self._close_reason: str | None = None
        self._close_kind: CloseKind | None = None
        self._closing_here = False
        self._peer_close_reason: str | None = None
        self._finisher: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._closed: asyncio.Future[str] = self.loop.create_future()

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        state = f"closed: {self._close_reason}" if self._close_reason else "open"
        return f"<rpc Connection {side} {state}>"

    # ------------------------------------------------------------------ public API

    @property
    def is_closed(self) -> bool:
        return self._close_reason is not None

    @property
    def close_reason(self) -> str | None:
        """Why the connection closed, or None while it is open."""
        return self._close_reason

    @property
    def close_kind(self) -> CloseKind | None:
        """Why the connection closed, as a value (see ``CloseKind``), or None while open."""
        return self._close_kind

    @property
    def peer_address(self) -> Any:
        return None if self._transport is None else self._transport.get_extra_info("peername")

    async def wait_ready(self) -> None:
        """Return once the handshake is done; raise ``HandshakeError`` if it failed."""
        await asyncio.shield(self._ready)

    async def wait_closed(self) -> str:
        """Wait until the connection and every task it owns have ended; return the reason."""
        return await asyncio.shield(self._closed)

    def sweep_shared_memory(self) -> None:
        """Once closed, unlink again every shared-memory segment either side created on this
        connection. Its close swept them, but the peer may have lent one after that (its side
        still open) and then died without sweeping (SIGKILL): the owner of a local peer
        process calls this once it has reaped it. Nothing while the connection is open."""
        if self._close_reason is not None and self._segments is not None:
            self._segments.close()

    def close(self, reason: str = "closed by this side") -> None:
        """Close: fail every call in flight with ``ConnectionClosed(reason)``, stop serving."""
        self._close(reason, "closed_here")

    def drop(self, reason: str) -> None:
        """Close at once, without waiting for the peer to read the reason (a pending
        handshake a server sheds)."""
        transport = self._transport
        self._close(reason, "protocol_error")
        if transport is not None:
            transport.abort()

    def _close(self, reason: str, kind: CloseKind) -> None:
        if self._close_reason is not None:
            return
        self._closing_here = True
        if self._transport is not None and not self._transport.is_closing():
            self._write(CLOSE, 0, 0, reason[:1000])
            self._flush()
            transport = self._transport
            if transport.can_write_eof():
                # Half-close, and let the peer close once it has read CLOSE: closing outright
                # could fail its writes (EPIPE, RST) before it reads the reason. What still
                # arrives is dropped.
                try:
                    transport.write_eof()
                except OSError:  # The peer is gone already (asyncio's shutdown() raises).
                    transport.abort()
            else:
                transport.close()
            # A peer that never closes (or never reads) is not waited for long.
            self.loop.call_later(min(2.0, self.settings.heartbeat_timeout), transport.abort)
        self._shutdown(reason, kind)

    def _closed_error(self) -> ConnectionClosed:
        assert self._close_reason is not None and self._close_kind is not None
        return ConnectionClosed(self._close_reason, self._close_kind)

    def add_close_callback(self, callback: Callable[[Connection], object]) -> None:
        """Call ``callback(self)`` once the connection and every task it owns have ended."""
        self._closed.add_done_callback(lambda _: callback(self))

    async def translate_closed(self, error: ConnectionClosed, function: str) -> BaseException:
        """The error a call of ``function`` fails with when the connection ends with ``error``:
        what the ``translate_closed`` given at construction makes of it, else ``error``."""
        return await self._calling.translate_closed(error, function)

    def check_menu(self, specs: Iterable[FunctionSpec]) -> None:
        """Raise ``ProtocolError`` naming every spec the peer lacks or types differently."""
        problems = [p for p in (self._menu_problem(s) for s in specs) if p]
        if problems:
            raise ProtocolError("the peer's functions differ:\n  " + "\n  ".join(problems))

    async def call(self, spec: FunctionSpec, /, *args: Any, **kwargs: Any) -> Any:
        """Run an ``rpc`` function on the peer and return its result."""
        if kwargs:
            args = spec.bind(args, kwargs)
        future = self.call_future_args(spec, args)
        call_id = self.started_id
        if self.writing_paused:
            await self.wait_writable()
        try:
            return await future
        except asyncio.CancelledError:
            self.abandon(call_id)
            raise

    # Per-call hot path: kept as one function on purpose (longer than the ~40-line rule);
    # each step split out (taking an id, writing the frame) costs a Python call per call.
    # Its body is ``call_future_args``'s (keep the two in step): one calling the other
    # would cost a Python call per call (~55 ns).
    def call_future(self, spec: FunctionSpec, /, *args: Any) -> asyncio.Future[Any]:
        """Start an ``rpc`` call; positional arguments only; no cancellation on the peer.

        The fast path for many calls in flight: no task per call (its call id is
        ``started_id`` until the next call starts). ``call_future_args`` takes the
        arguments as one tuple.
        """
        if len(args) != spec._fast_arity:  # (spec.bind's own fast path, inline)
            args = spec.bind(args, {})
        index = self._rpc_index.get(spec)
        if index is None:  # Not an rpc, not called yet, or the connection has closed.
            index = self._rpc_position(spec)
        if self._dropped:
            self._abort_dropped()
        call_id = self.started_id = self._next_id  # (_take_id, inline)
        self._next_id = call_id + 2 if call_id < 0xFFFF_FFFD else (1 if self.is_client else 2)
        out = self._out  # (_send_query and _write, inline)
        begin = len(out)
        out += _ZERO_HEADER
        segments = self._segments
        mark = segments.mark if segments is not None else 0
        try:
            self._encoder.encode_into(args, out, -1)
            if self._deferred:
                self._splice(begin)
            length = len(out) - begin - 4
            if length > self._send_limit:
                raise self._too_large(length)
        except BaseException as error:
            self._take_back(begin, mark)
            if isinstance(error, UNENCODABLE):
                raise cannot_send(spec, "arguments", error, arguments=args) from None
            raise
        HEADER.pack_into(out, begin, length, QUERY, call_id, index)
        future: asyncio.Future[Any] = _Future(loop=self.loop)  # (loop.create_future, inline)
        self._outgoing[call_id] = (spec, future)  # (before the write: a loss finds it)
        if len(out) >= CALL_WRITE_BYTES or not (call_id >> 1) & _WRITE_MASK:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)
        return future

    # Per-call hot path: ``call_future``'s body (keep the two in step).
    def call_future_args(self, spec: FunctionSpec, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """``call_future(spec, *args)``, for code that holds the arguments as a tuple:
        ``start_call``, ``call`` and the worker layer's ``run`` / ``submit`` (a call with
        ``*args`` from Python code costs about 60 ns more than a plain one on 3.11)."""
        if len(args) != spec._fast_arity:  # (spec.bind's own fast path, inline)
            args = spec.bind(args, {})
        index = self._rpc_index.get(spec)
        if index is None:  # Not an rpc, not called yet, or the connection has closed.
            index = self._rpc_position(spec)
        if self._dropped:
            self._abort_dropped()
        call_id = self.started_id = self._next_id  # (_take_id, inline)
        self._next_id = call_id + 2 if call_id < 0xFFFF_FFFD else (1 if self.is_client else 2)
        out = self._out  # (_send_query and _write, inline)
        begin = len(out)
        out += _ZERO_HEADER
        segments = self._segments
        mark = segments.mark if segments is not None else 0
        try:
            self._encoder.encode_into(args, out, -1)
            if self._deferred:
                self._splice(begin)
            length = len(out) - begin - 4
            if length > self._send_limit:
                raise self._too_large(length)
        except BaseException as error:
            self._take_back(begin, mark)
            if isinstance(error, UNENCODABLE):
                raise cannot_send(spec, "arguments", error, arguments=args) from None
            raise
        HEADER.pack_into(out, begin, length, QUERY, call_id, index)
        future: asyncio.Future[Any] = _Future(loop=self.loop)  # (loop.create_future, inline)
        self._outgoing[call_id] = (spec, future)  # (before the write: a loss finds it)
        if len(out) >= CALL_WRITE_BYTES or not (call_id >> 1) & _WRITE_MASK:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)
        return future

    def _take_back(self, begin: int, mark: int) -> None:
        """A frame that could not be sent: drop what it had written from ``begin`` on, and
        give back the shared-memory segments it had lent since ``mark``."""
        del self._out[begin:]
        self._deferred.clear()
        if self._segments is not None:
            self._segments.discard_after(mark)

    async def pipe(self, spec: FunctionSpec, /, *args: Any, **kwargs: Any) -> PipeReader[Any]:
        """Start a ``pipe`` function; its items arrive through the returned reader."""
        self._expect_kind(spec, "pipe")
        return await self._start_stream(spec, spec.bind(args, kwargs))

    async def state(
        self, spec: FunctionSpec, /, *args: Any, **kwargs: Any
    ) -> tuple[Any, PipeReader[Any]]:
        """Start a ``state`` function: its initial state, then a reader of its updates."""
        self._expect_kind(spec, "state")
        reader = await self._start_stream(spec, spec.bind(args, kwargs))
        assert reader.initial is not None
        try:
            initial = await reader.initial
        except asyncio.CancelledError:
            await reader.aclose()
            raise
        return initial, reader

    async def one_way(self, spec: FunctionSpec, /, *args: Any, **kwargs: Any) -> None:
        """Send a ``one_way`` call; returns once it is queued for sending."""
        self._expect_kind(spec, "one_way")
        index = self._index_of(spec)
        bound = spec.bind(args, kwargs)
        window = self._one_way
        while window.full and self._close_reason is None:
            await window.wait()
        self._send_query(spec, 0, index, bound)
        window.unacknowledged += 1
        if self.writing_paused:
            await self.wait_writable()

    async def reverse_pipe(self, spec: FunctionSpec, /, *args: Any, **kwargs: Any) -> Any:
        """Run a ``reverse_pipe`` function; the last argument is the stream to send.

        Items are sent as the peer grants credit; the result returns when the peer's
        implementation returns (which may be before the stream is exhausted).
        """
        self._expect_kind(spec, "reverse_pipe")
        bound = spec.bind(args, kwargs)
        index = self._index_of(spec)
        call_id = self._take_id()
        future: asyncio.Future[Any] = self.loop.create_future()
        credit = Credit(self.loop)
        self._send_query(spec, call_id, index, bound[:-1])
        self._outgoing[call_id] = ReversePipeCall(spec, future, credit)
        pump = self.loop.create_task(self._calling.pump(spec, call_id, bound[-1], credit, future))
        try:
            return await future
        except asyncio.CancelledError:
            self.abandon(call_id)
            raise
        finally:
            credit.stop()
            if not pump.done():
                pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    # ------------------------------------------------------------------ sending

    def _take_id(self) -> int:
        call_id = self._next_id
        self._next_id = call_id + 2 if call_id < 0xFFFF_FFFD else (1 if self.is_client else 2)
        return call_id

    def _rpc_position(self, spec: FunctionSpec) -> int:
        """The peer's menu position of an rpc function (``call_future``'s first call of it):
        raise ``TypeError`` for another kind, ``ConnectionClosed`` once closed."""
        self._expect_kind(spec, "rpc")
        index = self._index_of(spec)
        if self._close_reason is not None:
            raise self._closed_error()
        self._rpc_index[spec] = index
        return index

    def _index_of(self, spec: FunctionSpec) -> int:
        index = self._peer_index.get(spec)
        if index is None:
            if self._close_reason is not None:
                raise self._closed_error()
            if not self._ready.done():
                raise ProtocolError("the connection is not ready: wait_ready() first")
            problem = self._menu_problem(spec)
            if problem:
                raise ProtocolError(problem)
            index = self._peer_index[spec] = self._peer_positions[spec.key]
        return index

    def _menu_problem(self, spec: FunctionSpec) -> str | None:
        entry = self.peer_menu.get(spec.name)
        if entry is None:
            return f"{spec.name}: the peer does not serve this function"
        if entry.version != spec.version:
            return f"{spec.name}: version {spec.version} here, version {entry.version} on the peer"
        if entry.kind != spec.kind:
            return f"{spec.name}: a {spec.kind} here, a {entry.kind} on the peer"
        if entry.digest != spec.digest:
            return (
                f"{spec.name}: types differ: here {spec.signature}; on the peer {entry.signature}"
            )
        return None

    def _expect_kind(self, spec: FunctionSpec, kind: str) -> None:
        if spec.kind != kind:
            raise TypeError(f"{spec.name} is a {spec.kind} function, not a {kind}")

    def start_call(self, spec: FunctionSpec, args: tuple[Any, ...]) -> tuple[asyncio.Future[Any], int]:
        """Send an ``rpc`` call with its bound arguments (``spec.bind``); return the future of
        its result and its call id (for ``abandon``). Does not wait if writing is paused:
        ``call`` does."""
        future = self.call_future_args(spec, args)
        return future, self.started_id

    async def _start_stream(self, spec: FunctionSpec, args: tuple[Any, ...]) -> PipeReader[Any]:
        index = self._index_of(spec)
        call_id = self._take_id()
        self._send_query(spec, call_id, index, args)
        state = ReaderState(self, call_id, spec)
        if spec.kind == "state":
            state.initial = self.loop.create_future()
        reader: PipeReader[Any] = PipeReader(state)
        self._outgoing[call_id] = state
        self._write(CREDIT, call_id, self.settings.stream_window)
        if self.writing_paused:
            await self.wait_writable()
        return reader

    def _send_query(self, spec: FunctionSpec, call_id: int, index: int, args: tuple[Any, ...]) -> None:
        if self._close_reason is not None:
            raise self._closed_error()
        if self._dropped:
            self._abort_dropped()
        try:
            self._write(QUERY, call_id, index, args)
        except UNENCODABLE as error:
            raise cannot_send(spec, "arguments", error, arguments=args) from None

    async def _send_item(
        self, spec: FunctionSpec, call_id: int, item: Any, credit: Credit, serving: bool = False
    ) -> bool:
        """Send one stream item once ``credit`` allows (either direction of a stream);
        False if the stream or the connection has stopped."""
        await credit.wait()
        if credit.stopped or self._close_reason is not None:
            return False
        try:
            size = self._write(ITEM, call_id, 0, item)
        except UNENCODABLE as error:
            raise cannot_send(spec, "item", error, serving) from None
        credit.available -= size + ITEM_OVERHEAD
        if self.writing_paused:
            await self.wait_writable()
        return True

    def _grant(self, call_id: int, amount: int) -> None:
        if self._close_reason is None:
            self._write(CREDIT, call_id, amount)

    def abandon(self, call_id: int) -> None:
        """Stop a call from this side: tell the peer, forget it here."""
        entry = self._outgoing.pop(call_id, None)
        if entry is None:
            entry = self._incoming.get(call_id)
            if isinstance(entry, ServedStream) and self._close_reason is None:
                # A reverse pipe's implementation stopped reading: stop the sender.
                self._write(ABORT, call_id, 0)
            return
        if isinstance(entry, ReversePipeCall):
            entry.credit.stop()
        if self._close_reason is None:
            self._write(ABORT, call_id, 0)

    def _reader_dropped(self, state: ReaderState) -> None:
        """A stream's reader is garbage (any thread): see ``Calling.reader_dropped``."""
        self._calling.reader_dropped(state)

    def _write(self, message_type: int, call_id: int, argument: int, value: Any = _NO_PAYLOAD) -> int:
        """Append one frame to the outgoing buffer; return the payload size (for an ITEM,
        plus the bytes of the shared-memory segments it lends, also put in its argument:
        its credit cost counts them)."""
        out = self._out
        start = len(out)
        out += _ZERO_HEADER
        size = shared = 0
        if value is not _NO_PAYLOAD:
            segments = self._segments
            if segments is None:
                mark = lent = 0
            else:
                mark, lent = segments.mark, segments.lent_bytes
            try:
                self._encoder.encode_into(value, out, -1)
                if self._deferred:
                    self._splice(start)
                size = len(out) - start - HEADER_SIZE
                if size + LENGTH_OVERHEAD > self._send_limit:
                    raise self._too_large(size + LENGTH_OVERHEAD)
            except BaseException:
                del out[start:]
                self._deferred.clear()
                if segments is not None:
                    segments.discard_after(mark)  # what this message had lent
                raise
            if segments is not None and message_type == ITEM:
                shared = argument = min(segments.lent_bytes - lent, 0xFFFF_FFFF)
        HEADER.pack_into(out, start, size + LENGTH_OVERHEAD, message_type, call_id, argument)
        if len(out) >= _FLUSH_AT:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)
        return size + shared

    def _splice(self, begin: int) -> None:
        """Copy the arrays the encoder left out into the frame at ``begin`` of the outgoing
        buffer (``_arrays.splice``: one copy, aligned for the receiver)."""
        from . import _arrays  # (only a numpy array puts anything in _deferred)

        _arrays.splice(self._out, begin + HEADER_SIZE, self._deferred)

    def _wrote(self) -> None:
        """A frame was appended to the outgoing buffer (by the serving side, inline): write
        it now if the buffer is full, else once the current callback is done."""
        if len(self._out) >= _FLUSH_AT:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)

    def _too_large(self, length: int) -> MessageTooLarge:
        return MessageTooLarge(
            f"a message of {length} bytes exceeds max_message_size "
            f"({self.settings.max_message_size} bytes)"
        )

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        out = self._out
        if out:
            self._out = bytearray()
            transport = self._transport
            # Once closed, nothing more is sent (the write side may be shut down already).
            if transport is not None and self._close_reason is None and not transport.is_closing():
                transport.write(out)

    async def wait_writable(self) -> None:
        """Return once the transport accepts writes again (``ConnectionClosed`` if closed)."""
        while self.writing_paused and self._close_reason is None:
            if self._writable is None:
                self._writable = self.loop.create_future()
            await asyncio.shield(self._writable)
        if self._close_reason is not None:
            raise self._closed_error()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        writable = self._writable
        if writable is not None:
            self._writable = None
            if not writable.done():
                writable.set_result(None)

    # ------------------------------------------------------------------ receiving

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if self._on_made is not None:
            self._on_made(self)
        self._write(HELLO, 0, 0, self._handshake.hello())
        self._handshake.timer = self.loop.call_later(
            self.settings.handshake_timeout, self._handshake_timed_out
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        large = self._large
        if large is not None:
            return large[self._large_filled :]
        if self._end == self._capacity:
            self._compact()
        return self._view[self._end :]

    def _compact(self) -> None:
        """Move the unread bytes to the front; once authenticated, grow a small buffer."""
        start, end = self._start, self._end
        if self._capacity < _RECEIVE_BUFFER_SIZE and self._handshake.authenticated:
            self._buffer = bytearray(_RECEIVE_BUFFER_SIZE)
            self._buffer[: end - start] = self._view[start:end]
            self._view = memoryview(self._buffer)
            self._capacity = _RECEIVE_BUFFER_SIZE
            self._start, self._end = 0, end - start
        elif start:
            self._buffer[: end - start] = bytes(self._view[start:end])
            self._start, self._end = 0, end - start

    def buffer_updated(self, nbytes: int) -> None:
        self._received = True
        if self._close_reason is not None:
            self._start = self._end = 0  # Closed: drop what the peer still sends.
            self._large = None
            return
        if self._large is not None:
            self._large_filled += nbytes
            if self._large_filled == self._large_size:
                message_type, call_id, argument = self._large_header
                payload, buffer = self._large, self._large_buffer
                self._large = self._large_buffer = None
                try:
                    self._dispatch(message_type, call_id, argument, payload)
                finally:
                    self._leave()
                    if buffer is not None and not buffer.viewed:
                        give_back_buffer(buffer)  # decoded: the next large frame may use it
            return
        self._end += nbytes
        if self._flush_handle is None:
            self._flush_handle = _AFTER_READ  # Answers written now need no call_soon.
        try:
            self._process()
        finally:
            if self._serving._entered is not None:  # (Its runner, current while calls ran inline.)
                self._leave()
            if self._flush_handle is _AFTER_READ:
                self._flush_handle = None
            if self._out:
                self._flush()  # Answers to what was just read leave now, in one write.

    # Per-frame hot path: kept as one function on purpose (longer than the ~40-line rule);
    # a run of QUERY frames goes to the serving side in one call (serve_queries) and an rpc
    # call's RESPONSE is decoded here (as _dispatch does for it): each step split out costs a
    # Python call per frame.
    def _process(self) -> None:
        view = self._view
        start, end = self._start, self._end
        unpack = HEADER.unpack_from
        outgoing = self._outgoing
        # (These change only in _dispatch: taken again after it.)
        serve_queries = self._serve_queries
        on_query = self._on_query
        limit = self._limit
        try:
            while end - start >= HEADER_SIZE and self._close_reason is None:
                length, message_type, call_id, argument = unpack(view, start)
                if length > limit or length < LENGTH_OVERHEAD:
                    start = end = 0
                    self._frame_too_large(length)
                    break
                frame_end = start + 4 + length
                if frame_end > end:
                    if length > _LARGE_FRAME:
                        self._start_large(start, end, length, message_type, call_id, argument)
                        start = end
                    break
                if message_type == QUERY:
                    if frame_end == end:  # Alone: on_query costs less than a run's set-up.
                        on_query(call_id, argument, view[start + HEADER_SIZE : frame_end])
                        start = frame_end
                    else:  # This one and those that follow it.
                        start = serve_queries(view, start, end, limit)
                    continue
                payload = view[start + HEADER_SIZE : frame_end]
                start = frame_end
                if message_type == RESPONSE:
                    entry = outgoing.pop(call_id, None)
                    if type(entry) is tuple:  # An rpc call (RpcCall): _dispatch, inline.
                        spec, future = entry
                        if spec._copy_payload:
                            on_rpc_response(spec, future, payload)
                            continue
                        try:
                            future.set_result(spec.response_decoder.decode(payload))
                        except (msgspec.MsgspecError, UnicodeDecodeError) as error:
                            # Not decoded again: a shared-memory segment is taken once.
                            failed_to_decode(spec, future, error, payload)
                        except asyncio.InvalidStateError:
                            pass  # Cancelled by its caller (arrays go back as garbage).
                        continue
                    if entry is not None:  # A stream's: _dispatch has it.
                        outgoing[call_id] = entry
                self._leave()  # No task is current while other frames are dispatched.
                self._dispatch(message_type, call_id, argument, payload)
                serve_queries = self._serve_queries
                on_query = self._on_query
                limit = self._limit
        finally:
            # What was dispatched is consumed, even if a dispatch raised.
            if start == end:
                self._start = self._end = 0
            else:
                self._start = start

    def _start_large(
        self, start: int, end: int, length: int, message_type: int, call_id: int, argument: int
    ) -> None:
        """A large frame's beginning: receive its body straight into its own buffer (no
        further copies), a mapping whose memory follows the bytes that arrive."""
        have = end - start - HEADER_SIZE
        size = length - LENGTH_OVERHEAD
        buffer = self._large_buffer = take_buffer(size)
        large = memoryview(buffer)[:size]
        large[:have] = self._view[start + HEADER_SIZE : end]
        self._large_size = size
        self._large = large
        self._large_filled = have
        self._large_header = (message_type, call_id, argument)

    def _frame_too_large(self, length: int) -> None:
        if length < LENGTH_OVERHEAD:
            self._protocol_violation(f"malformed frame (length field {length})")
        elif not self._handshake.authenticated:
            self._protocol_violation(
                f"a frame of {length} bytes before authentication exceeds the limit of "
                f"{PREAUTH_MAX_MESSAGE_SIZE} bytes (not an rpc_parallel peer?)"
            )
        else:
            self._protocol_violation(
                f"a frame of {length} bytes exceeds max_message_size "
                f"({self.settings.max_message_size} bytes)"
            )

    # Per-frame hot path: kept as one function on purpose (longer than the ~40-line rule);
    # splitting it into steps adds a Python call per frame, which the benchmarks measure.
    def _dispatch(self, message_type: int, call_id: int, argument: int, payload: memoryview) -> None:
        if message_type == RESPONSE:
            entry = self._outgoing.get(call_id)
            if type(entry) is tuple:  # An rpc call (RpcCall).
                del self._outgoing[call_id]
                spec, future = entry
                if spec._copy_payload:
                    on_rpc_response(spec, future, payload)
                    return
                try:
                    future.set_result(spec.response_decoder.decode(payload))
                except (msgspec.MsgspecError, UnicodeDecodeError) as error:
                    # Not decoded again: a shared-memory segment is taken once.
                    failed_to_decode(spec, future, error, payload)
                except asyncio.InvalidStateError:
                    pass  # Cancelled by its caller (arrays go back as garbage).
            elif entry is not None:
                if type(entry) is not ReaderState:
                    del self._outgoing[call_id]
                entry._on_response(payload)
            elif self._segments is not None:
                _segments.release_in(payload)  # a finished call's answer: give back its arrays
        elif message_type == QUERY:
            self._on_query(call_id, argument, payload)  # (_query_too_early until ready)
        elif message_type == ITEM:
            if call_id & 1 == self._id_parity:
                reader = self._outgoing.get(call_id)
                if type(reader) is ReaderState:
                    reader._on_item(payload, argument)
                elif self._segments is not None:
                    _segments.release_in(payload)
            else:
                served = self._incoming.get(call_id)
                if type(served) is ServedStream and served.reader is not None:
                    served.reader._on_item(payload, argument)
                elif self._segments is not None:
                    _segments.release_in(payload)
        elif message_type == CREDIT:
            if call_id == 0:
                self._one_way_acknowledged(argument)
            elif call_id & 1 == self._id_parity:
                call = self._outgoing.get(call_id)
                if type(call) is ReversePipeCall:
                    call.credit.grant(argument)
            else:
                served = self._incoming.get(call_id)
                if type(served) is ServedStream and served.credit is not None:
                    served.credit.grant(argument)
        elif message_type == HEARTBEAT:
            pass
        elif message_type == END:
            if call_id & 1 == self._id_parity:
                reader = self._outgoing.pop(call_id, None)
                if type(reader) is ReaderState:
                    reader._end()
            else:
                served = self._incoming.get(call_id)
                if type(served) is ServedStream and served.reader is not None:
                    served.reader._end()
        elif message_type == ERROR:
            self._on_error(call_id, payload)
        elif message_type == ABORT:
            if call_id & 1 == self._id_parity:
                call = self._outgoing.get(call_id)
                if type(call) is ReversePipeCall:
                    call.credit.stop()
            else:
                served = self._incoming.get(call_id)
                if served is not None:
                    served.cancel()
        elif HELLO <= message_type <= MENU:
            self._on_handshake(message_type, payload)
        elif message_type == CLOSE:
            try:
                reason = frames.REASON_DECODER.decode(payload)
            except (msgspec.MsgspecError, UnicodeDecodeError):
                reason = "(unreadable reason)"
            self._peer_close_reason = f"closed by the peer: {reason}"
            self._shutdown(self._peer_close_reason, "closed_by_peer")
            if self._transport is not None:
                self._transport.close()
        else:
            self._protocol_violation(f"unknown message type {message_type}")

    def _on_error(self, call_id: int, payload: memoryview) -> None:
        entry = self._outgoing.pop(call_id, None)
        if entry is None:
            return
        spec = spec_of(entry)
        try:
            info = frames.ERROR_DECODER.decode(payload)
        except (msgspec.MsgspecError, UnicodeDecodeError) as error:
            fail(entry, ProtocolError(f"{spec.name}: malformed error message: {error}"))
            return
        fail(entry, error_from_info(spec, info))

    # ------------------------------------------------------------------ handshake

    def _on_handshake(self, message_type: int, payload: memoryview) -> None:
        """A HELLO, AUTH or MENU frame: the ``Handshake`` checks it; this sends the reply."""
        handshake = self._handshake
        try:
            if message_type == HELLO:
                self._write(AUTH, 0, 0, handshake.on_hello(payload))
            elif message_type == AUTH:
                handshake.on_auth(payload)
                self._limit = self.settings.max_message_size + ENVELOPE
                self._share_memory()
                self._write(MENU, 0, 0, self._serving.menu())
            else:
                self._became_ready(handshake.on_menu(payload))
        except HandshakeViolation as violation:
            self._protocol_violation(str(violation))

    def _query_too_early(self, call_id: int, index: int, payload: memoryview) -> None:
        self._protocol_violation("a call arrived before the handshake finished")

    def _queries_too_early(self, view: memoryview, start: int, end: int, limit: int) -> int:
        self._query_too_early(0, 0, view)
        return end

    def _share_memory(self) -> None:
        """Between processes of one host (a Unix socket), large arrays go through shared
        memory (decision 0022); the segments' names derive from the two nonces."""
        transport = self._transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        peer_nonce = self._handshake.peer_nonce
        if (sock is None or sock.family != socket.AF_UNIX or peer_nonce is None
                or not _segments.available()):
            return
        self._segments = _segments.Segments(
            _segments.tag_of(self._handshake.nonce), _segments.tag_of(peer_nonce),
            mapped_writes=self.settings.mapped_writes,
        )
        self._encoder = make_encoder(self._segments, self._deferred)

    def _became_ready(self, menu: list[MenuEntry]) -> None:
        self._on_query = self._serving.on_query
        self._serve_queries = self._serving.serve_queries
        self.peer_menu = {entry.name: entry for entry in menu}
        self._peer_positions = {(e.name, e.version): i for i, e in enumerate(menu)}
        self._ready.set_result(None)
        self._liveness.start()
        if self._on_ready is not None:
            self._on_ready(self)

    def _handshake_timed_out(self) -> None:
        self._protocol_violation(
            f"handshake timeout: no complete handshake within {self.settings.handshake_timeout:g} s"
        )

    def recent_stall(self) -> float | None:
        """For how many seconds this side's event loop was blocked, if it was lately
        (a heartbeat timer that fired, or is due, that late): the peer may have given up
        on this side for its silence. None if it was not."""
        return self._liveness.recent_stall()

    def _peer_silent(self, reason: str) -> None:
        self._close(reason, "heartbeat_timeout")
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------------ closing

    def _protocol_violation(self, reason: str) -> None:
        self._close(reason, "protocol_error")

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        if self._close_reason is None:
            kind: CloseKind = "lost"
            if exc is not None:
                reason = f"connection lost: {exc}"
            elif self._peer_close_reason is not None:
                reason, kind = self._peer_close_reason, "closed_by_peer"
            else:
                reason = "connection lost: the peer closed the connection"
            self._shutdown(reason, kind)
        self._transport = None

    def _shutdown(self, reason: str, kind: CloseKind) -> None:
        if self._close_reason is not None:
            return
        reason += self._liveness.stall_note(kind)
        self._close_reason = reason
        self._close_kind = kind
        self._rpc_index.clear()
        self._handshake.stop()
        self._liveness.stop()
        if self._segments is not None:
            self._segments.close()  # both sides' segments: nothing is left in /dev/shm
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._ready.done():
            self._ready.set_exception(HandshakeError(reason))
            self._ready.exception()  # Retrieved here; wait_ready() re-raises it.
        self._calling.fail_all(reason, kind)
        # What serves the peer's calls is cancelled; wait_closed returns once it has ended.
        tasks = self._serving.end(self._closing_here, self.settings.heartbeat_timeout)
        self.resume_writing()
        self._finisher = self.loop.create_task(self._finish_close(tasks))

    async def _finish_close(self, tasks: list[asyncio.Task[Any]]) -> None:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._transport is not None:
            await self._lost
        assert self._close_reason is not None
        self._closed.set_result(self._close_reason)

