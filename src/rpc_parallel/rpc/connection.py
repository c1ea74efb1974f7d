"""One authenticated, multiplexed RPC connection (either end).

The protocol object owns everything that belongs to the connection: calls in flight in both
directions, the tasks that serve the peer's calls, the heartbeat timer. ``close()`` ends all of
them; ``wait_closed()`` returns once they have ended.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections import deque
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Iterable,
    Sequence,
)
from typing import Any, TypeVar

import msgspec

from . import frames
from ._calling import ReversePipeCall, RpcCall, cannot_send, error_from_info
from ._compat import enter_task as _enter_task  # What Python 3.12's eager tasks use.
from ._compat import leave_task as _leave_task
from ._handshake import prove, verify
from ._serving import (
    NOT_STARTED,
    Implementation,
    ServedStream,
    as_async_iterator,
    cancel_all,
    error_info,
    first_step,
    resume,
)
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
    ErrorInfo,
    MenuEntry,
)
from .functions import ENCODER, FunctionSpec
from .settings import ENVELOPE, PREAUTH_MAX_MESSAGE_SIZE, RpcSettings
from .streams import ITEM_OVERHEAD, Credit, PipeReader

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
_LARGE_FRAME = _RECEIVE_BUFFER_SIZE // 2
_SPARE_LIMIT = 64 * 1024 * 1024  # The largest receive buffer kept for the next large frame.
_FLUSH_AT = 256 * 1024
_ZERO_HEADER = bytes(HEADER_SIZE)
_NO_PAYLOAD: Any = object()


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
        self.settings = settings or RpcSettings()
        self.is_client = is_client
        self.user_data: Any = None
        """Free for the layer above (the worker layer keeps connection state here)."""
        self.peer_menu: dict[str, MenuEntry] = {}
        self._translate_lost = translate_closed
        self._translating: asyncio.Task[None] | None = None
        self._secret = secret
        self._served = list(implementations)
        self._on_one_way_error = on_one_way_error
        self._on_ready = on_ready
        self._on_made = on_made
        self._context = contextvars.copy_context()
        self._context.run(current_connection.set, self)
        self._transport: asyncio.Transport | None = None
        self._peer_index: dict[FunctionSpec, int] = {}
        self._peer_positions: dict[tuple[str, int], int] = {}
        self._next_id = 1 if is_client else 2
        self._id_parity = 1 if is_client else 0
        self._outgoing: dict[int, Any] = {}
        self._incoming: dict[int, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._one_way_tasks: set[asyncio.Task[Any]] = set()
        """One-way calls received. Closing from this side cancels them; one that arrived
        before the peer closed or vanished is still served, for up to heartbeat_timeout."""
        # rpc calls to coroutine implementations wait here for the runner task (_run_queued).
        self._queued: deque[tuple[int, Implementation, tuple[Any, ...]]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._runner_idle: asyncio.Future[None] | None = None  # Set to wake an idle runner.
        # Sending.
        self._out = bytearray()
        self._flush_handle: asyncio.Handle | None = None
        self._writable: asyncio.Future[None] | None = None
        self.writing_paused = False
        """True while the transport's buffer is over its high-water mark (read only):
        senders then ``await wait_writable()``, as ``call`` does after ``start_call``."""
        self._init_receiving()
        self._init_lifecycle()

    def _init_receiving(self) -> None:
        """The receive buffer and the state of a large frame being read."""
        self._buffer = bytearray(_RECEIVE_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self._large: memoryview | None = None
        self._spare: bytearray | None = None  # Reused for large frames: no page faults.
        self._large_header: tuple[int, int, int] = (0, 0, 0)
        self._large_filled = 0
        self._limit = PREAUTH_MAX_MESSAGE_SIZE
        self._send_limit = self.settings.max_message_size + ENVELOPE

    def _init_lifecycle(self) -> None:
        """Handshake, liveness and closing state."""
        self._nonce = os.urandom(32)
        self._peer_nonce: bytes | None = None
        self._authenticated = False
        self._ready: asyncio.Future[None] = self.loop.create_future()
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._received = False
        self._last_heard = 0.0
        # Closing.
        self._close_reason: str | None = None
        self._close_kind: CloseKind | None = None
        self._closing_here = False
        self._peer_close_reason: str | None = None
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

    def close(self, reason: str = "closed by this side") -> None:
        """Close: fail every call in flight with ``ConnectionClosed(reason)``, stop serving."""
        self._close(reason, "closed_here")

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
        if self._translate_lost is None:
            return error
        return (await self._translate_lost(self, error))(function)

    def check_menu(self, specs: Iterable[FunctionSpec]) -> None:
        """Raise ``ProtocolError`` naming every spec the peer lacks or types differently."""
        problems = [p for p in (self._menu_problem(s) for s in specs) if p]
        if problems:
            raise ProtocolError("the peer's functions differ:\n  " + "\n  ".join(problems))

    async def call(self, spec: FunctionSpec, /, *args: Any, **kwargs: Any) -> Any:
        """Run an ``rpc`` function on the peer and return its result."""
        future, call_id = self.start_call(spec, spec.bind(args, kwargs))
        if self.writing_paused:
            await self.wait_writable()
        try:
            return await future
        except asyncio.CancelledError:
            self.abandon(call_id)
            raise

    def call_future(self, spec: FunctionSpec, /, *args: Any) -> asyncio.Future[Any]:
        """Start an ``rpc`` call; positional arguments only; no cancellation on the peer.

        The fast path for many calls in flight: no task per call.
        """
        return self.start_call(spec, spec.bind(args, {}))[0]

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
        self._send_query(spec, 0, index, spec.bind(args, kwargs))
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
        pump = self.loop.create_task(self._pump(spec, call_id, bound[-1], credit, future))
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
        ``call`` does. Part of the per-call hot path: kept flat."""
        index = self._peer_index.get(spec)
        if index is None or spec.kind != "rpc" or self._close_reason is not None:
            if spec.kind != "rpc":
                self._expect_kind(spec, "rpc")
            if index is None:
                index = self._index_of(spec)
            if self._close_reason is not None:
                raise self._closed_error()
        call_id = self._next_id  # (_take_id, inline)
        self._next_id = call_id + 2 if call_id < 0xFFFF_FFFD else (1 if self.is_client else 2)
        try:  # (_send_query, inline)
            self._write(QUERY, call_id, index, args)
        except (TypeError, MessageTooLarge) as error:
            raise cannot_send(spec, "arguments", error) from None
        future: asyncio.Future[Any] = self.loop.create_future()
        self._outgoing[call_id] = RpcCall(spec, future)
        return future, call_id

    async def _start_stream(self, spec: FunctionSpec, args: tuple[Any, ...]) -> PipeReader[Any]:
        index = self._index_of(spec)
        call_id = self._take_id()
        self._send_query(spec, call_id, index, args)
        reader: PipeReader[Any] = PipeReader(self, call_id, spec)
        if spec.kind == "state":
            reader.initial = self.loop.create_future()
        self._outgoing[call_id] = reader
        self._write(CREDIT, call_id, self.settings.stream_window)
        if self.writing_paused:
            await self.wait_writable()
        return reader

    def _send_query(self, spec: FunctionSpec, call_id: int, index: int, args: tuple[Any, ...]) -> None:
        if self._close_reason is not None:
            raise self._closed_error()
        try:
            self._write(QUERY, call_id, index, args)
        except (TypeError, MessageTooLarge) as error:
            raise cannot_send(spec, "arguments", error) from None

    async def _pump(
        self,
        spec: FunctionSpec,
        call_id: int,
        stream: AsyncIterable[Any] | Iterable[Any],
        credit: Credit,
        future: asyncio.Future[Any],
    ) -> None:
        """Send a reverse pipe's items as credit allows, then END."""
        try:
            if isinstance(stream, AsyncIterable):
                async for item in stream:
                    if not await self._send_item(spec, call_id, item, credit):
                        return
            else:
                for item in stream:
                    if not await self._send_item(spec, call_id, item, credit):
                        return
            if not credit.stopped and self._close_reason is None:
                self._write(END, call_id, 0)
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except BaseException as error:
            # The caller's stream failed: stop the remote call and fail this one.
            if call_id in self._outgoing:
                self.abandon(call_id)
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise

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
        except (TypeError, MessageTooLarge) as error:
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

    def _write(self, message_type: int, call_id: int, argument: int, value: Any = _NO_PAYLOAD) -> int:
        """Append one frame to the outgoing buffer; return the payload size."""
        out = self._out
        start = len(out)
        out += _ZERO_HEADER
        size = 0
        if value is not _NO_PAYLOAD:
            try:
                ENCODER.encode_into(value, out, -1)
            except BaseException:
                del out[start:]
                raise
            size = len(out) - start - HEADER_SIZE
            if size + LENGTH_OVERHEAD > self._send_limit:
                del out[start:]
                raise MessageTooLarge(
                    f"a message of {size + LENGTH_OVERHEAD} bytes exceeds max_message_size "
                    f"({self.settings.max_message_size} bytes)"
                )
        HEADER.pack_into(out, start, size + LENGTH_OVERHEAD, message_type, call_id, argument)
        if len(out) >= _FLUSH_AT:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_soon(self._flush)
        return size

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
        self._write(HELLO, 0, 0, frames.Hello(frames.MAGIC, frames.PROTOCOL_VERSION, self._nonce))
        self._handshake_timer = self.loop.call_later(
            self.settings.handshake_timeout, self._handshake_timed_out
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        large = self._large
        if large is not None:
            return large[self._large_filled :]
        if self._end == _RECEIVE_BUFFER_SIZE:
            self._compact()
        return self._view[self._end :]

    def _compact(self) -> None:
        start, end = self._start, self._end
        if start:
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
            if self._large_filled == len(self._large):
                message_type, call_id, argument = self._large_header
                payload = self._large
                self._large = None
                self._dispatch(message_type, call_id, argument, payload)
            return
        self._end += nbytes
        self._process()
        if self._flush_handle is not None:
            self._flush()  # Answers to what was just read leave now, in one write.

    def _process(self) -> None:
        view = self._view
        start, end = self._start, self._end
        unpack = HEADER.unpack_from
        while end - start >= HEADER_SIZE and self._close_reason is None:
            length, message_type, call_id, argument = unpack(view, start)
            if length > self._limit or length < LENGTH_OVERHEAD:
                self._start = self._end = 0
                self._frame_too_large(length)
                return
            frame_end = start + 4 + length
            if frame_end <= end:
                self._start = frame_end
                self._dispatch(message_type, call_id, argument, view[start + HEADER_SIZE : frame_end])
                start = frame_end
                continue
            if length > _LARGE_FRAME:
                # Receive the body straight into its own buffer: no further copies.
                have = end - start - HEADER_SIZE
                size = length - LENGTH_OVERHEAD
                spare = self._spare
                if spare is None or len(spare) < size:
                    spare = bytearray(size)
                    if size <= _SPARE_LIMIT:
                        self._spare = spare
                large = memoryview(spare)[:size]
                large[:have] = view[start + HEADER_SIZE : end]
                self._large = large
                self._large_filled = have
                self._large_header = (message_type, call_id, argument)
                start = end
            break
        if start == end:
            self._start = self._end = 0
        else:
            self._start = start

    def _frame_too_large(self, length: int) -> None:
        if length < LENGTH_OVERHEAD:
            self._protocol_violation(f"malformed frame (length field {length})")
        elif not self._authenticated:
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
            if entry is not None:
                if type(entry) is not PipeReader:
                    del self._outgoing[call_id]
                entry._on_response(payload)
        elif message_type == QUERY:
            if not self._ready.done():
                self._protocol_violation("a call arrived before the handshake finished")
            else:
                self._on_query(call_id, argument, payload)
        elif message_type == ITEM:
            if call_id & 1 == self._id_parity:
                reader = self._outgoing.get(call_id)
                if type(reader) is PipeReader:
                    reader._on_item(payload)
            else:
                served = self._incoming.get(call_id)
                if type(served) is ServedStream and served.reader is not None:
                    served.reader._on_item(payload)
        elif message_type == CREDIT:
            if call_id & 1 == self._id_parity:
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
                if type(reader) is PipeReader:
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
        elif message_type == HELLO:
            self._on_hello(payload)
        elif message_type == AUTH:
            self._on_auth(payload)
        elif message_type == MENU:
            self._on_menu(payload)
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
        try:
            info = frames.ERROR_DECODER.decode(payload)
        except (msgspec.MsgspecError, UnicodeDecodeError) as error:
            entry._fail(ProtocolError(f"{entry.spec.name}: malformed error message: {error}"))
            return
        entry._fail(error_from_info(entry.spec, info))

    # ------------------------------------------------------------------ serving

    # Per-frame hot path: kept as one function on purpose (longer than the ~40-line rule);
    # splitting it into steps adds a Python call per frame, which the benchmarks measure.
    def _on_query(self, call_id: int, index: int, payload: memoryview) -> None:
        try:
            implementation: Implementation = self._served[index]
        except IndexError:
            if call_id:
                self._write(ERROR, call_id, 0,
                            ErrorInfo("protocol", "ProtocolError", f"no function at index {index}", ""))
            return
        spec = implementation.spec
        kind = spec.kind
        try:
            args = spec.decode_arguments(payload)
        except ProtocolError as error:
            if kind == "one_way":
                self._one_way_failed(spec, error)
            elif call_id:
                self._write(ERROR, call_id, 0, error_info(error))
            return
        if kind == "rpc" and not implementation.in_thread:
            # No task per call: see _serve_inline and _run_queued.
            if (
                self._runner_idle is not None
                and implementation.starts_nothing
                and self._serve_inline(call_id, implementation, args, self._runner_idle)
            ):
                return
            self._queued.append((call_id, implementation, args))
            if self._runner is None:
                self._start_runner()
            elif self._runner_idle is not None:
                if not self._runner_idle.done():
                    self._runner_idle.set_result(None)
                self._runner_idle = None
            return
        context = self._context.copy()
        if kind == "rpc":
            self._incoming[call_id] = self.loop.create_task(
                self._serve_rpc(call_id, implementation, args), context=context
            )
        elif kind == "one_way":
            task = self.loop.create_task(self._serve_one_way(implementation, args), context=context)
            self._one_way_tasks.add(task)
            task.add_done_callback(self._one_way_tasks.discard)
        else:
            served = ServedStream(
                Credit(self.loop) if kind != "reverse_pipe" else None,
                PipeReader(self, call_id, spec) if kind == "reverse_pipe" else None,
            )
            self._incoming[call_id] = served
            if kind == "reverse_pipe":
                self._write(CREDIT, call_id, self.settings.stream_window)
                served.task = self.loop.create_task(
                    self._serve_reverse_pipe(call_id, implementation, args, served), context=context
                )
            else:
                served.task = self.loop.create_task(
                    self._serve_stream(call_id, implementation, args, served), context=context
                )

    async def _run(self, implementation: Implementation, args: tuple[Any, ...]) -> Any:
        if implementation.in_thread:
            function = functools.partial(
                contextvars.copy_context().run, implementation.handler, *args
            )
            return await self.loop.run_in_executor(implementation.executor, function)
        return await implementation.handler(*args)

    async def _serve_rpc(self, call_id: int, implementation: Implementation, args: tuple[Any, ...]) -> None:
        await self._answer(call_id, implementation, self._run(implementation, args))

    async def _answer(self, call_id: int, implementation: Implementation, call: Awaitable[Any]) -> None:
        """Await a served rpc call and send its result or error (unless it was abandoned)."""
        try:
            result = await call
        except asyncio.CancelledError:
            self._incoming.pop(call_id, None)
            raise
        except Exception as error:
            self._incoming.pop(call_id, None)
            self._respond_error(call_id, error)
            return
        if self._incoming.pop(call_id, None) is not None:
            self._respond(implementation.spec, call_id, result)

    def _serve_inline(
        self,
        call_id: int,
        implementation: Implementation,
        args: tuple[Any, ...],
        idle: asyncio.Future[Any],
    ) -> bool:
        """Run an rpc call's first step now, with the idle runner as the current task.

        Most calls return without waiting: answered here, as fast as a raw protocol, without
        a loop iteration. One that waits is handed to the runner, which becomes its task (the
        task ``asyncio.current_task()``, ``asyncio.timeout`` and task groups saw in the first
        step). False if this cannot be done here (the call is then queued).
        """
        runner = self._runner
        assert runner is not None
        try:
            _enter_task(self.loop, runner)
        except RuntimeError:  # Called from inside a task.
            return False
        context = self._context.copy()
        try:
            coroutine = implementation.handler(*args)
            waiting = context.run(coroutine.send, None)
        except StopIteration as done:
            self._respond(implementation.spec, call_id, done.value)
            return True
        except (Exception, asyncio.CancelledError) as error:
            self._respond_error(call_id, error)
            return True
        finally:
            _leave_task(self.loop, runner)
        self._runner = self._runner_idle = None
        self._incoming[call_id] = runner
        idle.set_result((call_id, implementation, coroutine, waiting, context))
        return True

    def _start_runner(self) -> None:
        runner = self.loop.create_task(self._run_queued(), context=self._context.copy())
        self._runner = runner
        self._tasks.add(runner)  # (It takes itself out when it ends.)

    # Per-frame hot path: kept as one function on purpose (longer than the ~40-line rule);
    # splitting it into steps adds a Python call per frame, which the benchmarks measure.
    async def _run_queued(self) -> None:
        """Run queued rpc calls one after the other, each in a context of its own.

        Calls that return without waiting cost no task and no loop iteration of their own,
        and their responses leave in one write; then the runner waits for more (and lends
        itself to _serve_inline). A call that has to wait keeps this task as its task to the
        end (``asyncio.current_task()``, ``asyncio.timeout`` and task groups see one task
        for the whole call, as with a task per call; ABORT cancels it), and a new runner
        takes the rest of the queue.
        """
        task = asyncio.current_task()
        assert task is not None
        queue = self._queued
        base = self._context
        try:
            while self._close_reason is None:
                if not queue:
                    if self._out:
                        self._flush()  # Now, rather than one loop iteration later.
                    idle = self._runner_idle = self.loop.create_future()
                    try:
                        job = await idle
                    except asyncio.CancelledError:
                        if not idle.done() or idle.cancelled() or idle.result() is None:
                            raise
                        # Cancelled once _serve_inline had handed over a call: pass the
                        # cancellation on to it.
                        job = idle.result()
                        task.uncancel()
                        task.cancel()
                    if job is None:
                        continue
                    call_id, implementation, awaitable, waiting, context = job
                else:
                    call_id, implementation, args = queue.popleft()
                    context = base.copy()
                    try:
                        if implementation.starts_nothing:
                            awaitable = implementation.handler(*args)
                            waiting = context.run(awaitable.send, None)
                        else:
                            awaitable, waiting = context.run(
                                first_step, implementation.handler, args
                            )
                    except StopIteration as done:
                        self._respond(implementation.spec, call_id, done.value)
                        continue
                    except (Exception, asyncio.CancelledError) as error:
                        # A CancelledError here comes from the implementation itself
                        # (nothing has cancelled this task): answer it, and go on.
                        self._respond_error(call_id, error)
                        continue
                    self._runner = None
                    if queue:
                        self._start_runner()
                    self._incoming[call_id] = task
                # The call waits: this task is its task from now on.
                if waiting is not NOT_STARTED:
                    awaitable = resume(awaitable, waiting, context)
                await self._answer(call_id, implementation, awaitable)
                return
        finally:
            self._tasks.discard(task)
            if self._runner is task:
                self._runner = self._runner_idle = None
                queue.clear()  # (Closed: these calls are not run.)

    def _respond(self, spec: FunctionSpec, call_id: int, result: Any) -> None:
        if self._close_reason is not None:
            return
        try:
            self._write(RESPONSE, call_id, 0, result)
        except Exception as error:  # TypeError, MessageTooLarge, or a register_type hook's
            self._respond_error(call_id, cannot_send(spec, "result", error, serving=True))

    def _respond_error(self, call_id: int, error: BaseException) -> None:
        if self._close_reason is None:
            self._write(ERROR, call_id, 0, error_info(error))

    async def _serve_one_way(self, implementation: Implementation, args: tuple[Any, ...]) -> None:
        try:
            await self._run(implementation, args)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._one_way_failed(implementation.spec, error)

    def _one_way_failed(self, spec: FunctionSpec, error: BaseException) -> None:
        if self._on_one_way_error is not None:
            self._on_one_way_error(spec, error)
        else:
            self.loop.call_exception_handler(
                {"message": f"one-way function {spec.name} failed", "exception": error}
            )

    async def _serve_stream(
        self, call_id: int, implementation: Implementation, args: tuple[Any, ...], served: ServedStream
    ) -> None:
        spec = implementation.spec
        credit = served.credit
        assert credit is not None
        iterator: Any = None
        try:
            if spec.kind == "state":
                initial, updates = await self._run(implementation, args)
                self._respond(spec, call_id, initial)
            else:
                updates = implementation.handler(*args)
            iterator = as_async_iterator(updates, self.loop, implementation.executor)
            async for item in iterator:
                if not await self._send_item(spec, call_id, item, credit, serving=True):
                    return
            if self._close_reason is None and self._incoming.get(call_id) is served:
                self._write(END, call_id, 0)
        except (asyncio.CancelledError, ConnectionClosed):
            pass
        except Exception as error:
            if self._incoming.get(call_id) is served:
                self._respond_error(call_id, error)
        finally:
            if self._incoming.get(call_id) is served:
                del self._incoming[call_id]
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    async def _serve_reverse_pipe(
        self, call_id: int, implementation: Implementation, args: tuple[Any, ...], served: ServedStream
    ) -> None:
        reader = served.reader
        assert reader is not None
        try:
            result = await implementation.handler(*args, reader)
        except asyncio.CancelledError:
            pass
        except Exception as error:
            if self._incoming.get(call_id) is served:
                self._respond_error(call_id, error)
        else:
            if self._incoming.get(call_id) is served:
                self._respond(implementation.spec, call_id, result)
        finally:
            if self._incoming.get(call_id) is served:
                del self._incoming[call_id]
            reader._end()

    # ------------------------------------------------------------------ handshake

    def _on_hello(self, payload: memoryview) -> None:
        if self._peer_nonce is not None:
            self._protocol_violation("a second HELLO")
            return
        try:
            hello = frames.HELLO_DECODER.decode(payload)
        except (msgspec.MsgspecError, UnicodeDecodeError):
            self._protocol_violation("handshake: malformed HELLO (not an rpc_parallel peer?)")
            return
        if hello.magic != frames.MAGIC:
            self._protocol_violation(f"handshake: wrong magic {hello.magic[:40]!r} (not an rpc_parallel peer)")
            return
        if hello.version != frames.PROTOCOL_VERSION:
            self._protocol_violation(
                f"handshake: the peer speaks protocol version {hello.version}, "
                f"this side speaks {frames.PROTOCOL_VERSION}"
            )
            return
        if len(hello.nonce) != 32:
            self._protocol_violation("handshake: malformed nonce")
            return
        self._peer_nonce = hello.nonce
        role = b"client" if self.is_client else b"server"
        self._write(AUTH, 0, 0, prove(self._secret, role, hello.nonce, self._nonce))

    def _on_auth(self, payload: memoryview) -> None:
        if self._peer_nonce is None or self._authenticated:
            self._protocol_violation("handshake: AUTH out of order")
            return
        try:
            proof = frames.AUTH_DECODER.decode(payload)
        except (msgspec.MsgspecError, UnicodeDecodeError):
            self._protocol_violation("handshake: malformed AUTH")
            return
        peer_role = b"server" if self.is_client else b"client"
        if not verify(self._secret, peer_role, self._nonce, self._peer_nonce, proof):
            self._protocol_violation(
                "authentication failed: the peer does not hold this application's secret"
            )
            return
        self._authenticated = True
        self._limit = self.settings.max_message_size + ENVELOPE
        self._write(MENU, 0, 0, [i.menu_entry() for i in self._served])

    def _on_menu(self, payload: memoryview) -> None:
        if not self._authenticated or self._ready.done():
            self._protocol_violation("handshake: MENU out of order")
            return
        try:
            menu = frames.MENU_DECODER.decode(payload)
        except (msgspec.MsgspecError, UnicodeDecodeError):
            self._protocol_violation("handshake: malformed MENU")
            return
        self.peer_menu = {entry.name: entry for entry in menu}
        self._peer_positions = {(e.name, e.version): i for i, e in enumerate(menu)}
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self._ready.set_result(None)
        self._last_heard = self.loop.time()
        self._heartbeat_timer = self.loop.call_later(self.settings.heartbeat_interval, self._heartbeat)
        if self._on_ready is not None:
            self._on_ready(self)

    def _handshake_timed_out(self) -> None:
        self._protocol_violation(
            f"handshake timeout: no complete handshake within {self.settings.handshake_timeout:g} s"
        )

    def _heartbeat(self) -> None:
        now = self.loop.time()
        if self._received:
            self._received = False
            self._last_heard = now
        elif now - self._last_heard >= self.settings.heartbeat_timeout:
            self._close(
                f"heartbeat timeout: nothing heard from the peer for "
                f"{now - self._last_heard:.1f} s (heartbeat_timeout "
                f"{self.settings.heartbeat_timeout:g} s)",
                "heartbeat_timeout",
            )
            if self._transport is not None:
                self._transport.abort()
            return
        self._write(HEARTBEAT, 0, 0)
        self._heartbeat_timer = self.loop.call_later(self.settings.heartbeat_interval, self._heartbeat)

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
        self._close_reason = reason
        self._close_kind = kind
        for timer in (self._handshake_timer, self._heartbeat_timer, self._flush_handle):
            if timer is not None:
                timer.cancel()
        self._flush_handle = None
        if not self._ready.done():
            self._ready.set_exception(HandshakeError(reason))
            self._ready.exception()  # Retrieved here; wait_ready() re-raises it.
        self._fail_outgoing(reason, kind)
        self._end_incoming()

    def _fail_outgoing(self, reason: str, kind: CloseKind) -> None:
        """Fail every call this side made: with ``ConnectionClosed``, or with what the
        layer above's ``translate_closed`` makes of it."""
        outgoing, self._outgoing = self._outgoing, {}
        translated = []
        for entry in outgoing.values():
            if type(entry) is ReversePipeCall:
                entry.credit.stop()
            if self._translate_lost is not None and type(entry) is not PipeReader:
                translated.append(entry)
            else:
                entry._fail(ConnectionClosed(reason, kind))
        if translated:
            self._translating = self.loop.create_task(
                self._fail_translated(translated, ConnectionClosed(reason, kind))
            )

    def _end_incoming(self) -> None:
        """Cancel what serves the peer's calls (one-way calls the peer sent before it went
        run on, within a bound); ``wait_closed`` returns once all of it has ended."""
        incoming, self._incoming = self._incoming, {}
        tasks = [*self._tasks, *self._one_way_tasks]
        one_way = list(self._one_way_tasks)
        if self._closing_here:
            for task in one_way:
                task.cancel()
        elif one_way:
            # Sent before the peer closed or vanished: they run, within a bound.
            self.loop.call_later(self.settings.heartbeat_timeout, cancel_all, one_way)
        for served in incoming.values():
            served.cancel()
            tasks.append(served if isinstance(served, asyncio.Task) else served.task)
        for task in self._tasks:
            task.cancel()
        self.resume_writing()
        finisher = self.loop.create_task(self._finish_close([t for t in tasks if t is not None]))
        self._tasks.add(finisher)

    async def _fail_translated(self, calls: list[RpcCall], error: ConnectionClosed) -> None:
        """Fail calls in flight with the error the layer above makes of the lost connection."""
        assert self._translate_lost is not None
        try:
            make = await self._translate_lost(self, error)
        except BaseException:
            for call in calls:
                call._fail(ConnectionClosed(error.reason, error.kind))
            raise
        for call in calls:
            call._fail(make(call.spec.name))

    async def _finish_close(self, tasks: list[asyncio.Task[Any]]) -> None:
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._transport is not None:
            await self._lost
        assert self._close_reason is not None
        self._closed.set_result(self._close_reason)
