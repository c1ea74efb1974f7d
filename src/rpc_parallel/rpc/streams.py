"""Both ends of a stream: the reader with its credit window, and the sender's credit."""

from __future__ import annotations

import asyncio
import weakref
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from . import _segments
from .errors import ConnectionClosed, ProtocolError

if TYPE_CHECKING:
    from .functions import FunctionSpec
    from .settings import RpcSettings

T_co = TypeVar("T_co", covariant=True)  # A reader only gives items: PipeReader[bool] is a PipeReader[int].

ITEM_OVERHEAD = 64
"""What each stream item counts against the credit window beyond its payload size, so a
window also bounds how many (small) items a receiver queues ahead of its consumer."""


class StreamOwner(Protocol):
    """What a reader needs of the connection that carries its stream (``Connection``)."""

    loop: asyncio.AbstractEventLoop
    settings: RpcSettings

    def _grant(self, call_id: int, amount: int) -> None:
        """Return ``amount`` bytes of credit to the sender."""

    def abandon(self, call_id: int) -> None:
        """Stop the call from this side."""

    def _reader_dropped(self, state: ReaderState) -> None:
        """``state``'s reader is garbage: abort it soon (from any thread, at any moment)."""

    async def translate_closed(self, error: ConnectionClosed, function: str) -> BaseException:
        """The error a lost connection makes for a call of ``function``."""
        ...


class ReaderState:
    """What the connection holds of a stream it receives: the items queued ahead of the
    consumer, the credit to return, how the stream ended. The program holds the
    ``PipeReader`` around it; the connection holds only this, so a reader the program drops
    is garbage, and its weak reference's callback aborts the stream (``_dropped``)."""

    __slots__ = (
        "_call_id", "_connection", "_consumed", "_done", "_error", "_grant_at", "_items",
        "_translated", "_waiter", "_watch", "initial", "spec",
    )

    def __init__(self, connection: StreamOwner, call_id: int, spec: FunctionSpec) -> None:
        self._connection = connection
        self._call_id = call_id
        self.spec = spec
        self._items: deque[tuple[Any, int]] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._done = False
        self._error: BaseException | None = None
        self._consumed = 0
        self._grant_at = max(1, connection.settings.stream_window // 2)
        self.initial: asyncio.Future[Any] | None = None
        self._translated = False
        self._watch: weakref.ref[Any] | None = None

    def watch(self, reader: object) -> None:
        """Abort the stream once ``reader`` is garbage (dropped without ``aclose()``)."""
        self._watch = weakref.ref(reader, self._dropped)

    def _dropped(self, _: object) -> None:
        """The reader is gone. Called by the garbage collector, on whatever thread it runs:
        only schedules the abort on the connection's loop."""
        if not self._done:
            self._connection._reader_dropped(self)

    def _abort(self) -> None:
        """Stop the stream from this side (on the loop's thread)."""
        if not self._done:
            self._done = True
            self._connection.abandon(self._call_id)
        self._items.clear()

    async def next(self) -> Any:
        while not self._items:
            if self._error is not None:
                if not self._translated and isinstance(self._error, ConnectionClosed):
                    # The layer above's error for a lost connection, made once.
                    self._translated = True
                    self._error = await self._connection.translate_closed(
                        self._error, self.spec.name
                    )
                raise self._error
            if self._done:
                raise StopAsyncIteration
            waiter = self._waiter = self._connection.loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        item, size = self._items.popleft()
        if not self._done:
            self._consumed += size
            if self._consumed >= self._grant_at:
                self._connection._grant(self._call_id, self._consumed)
                self._consumed = 0
        return item

    # Called by the connection.

    def _on_item(self, payload: memoryview, shared: int = 0) -> None:
        """An ITEM; ``shared``: the bytes of the shared-memory segments it lends (its frame's
        argument), part of its cost."""
        if self._done:
            _segments.release_in(payload)
            return
        try:
            item = self.spec.decode_item(payload)
        except ProtocolError as error:
            self._fail(error)
            self._connection.abandon(self._call_id)
            return
        self._items.append((item, len(payload) + ITEM_OVERHEAD + shared))
        self._wake()

    def _on_response(self, payload: memoryview) -> None:
        initial = self.initial
        if initial is None or initial.done():
            _segments.release_in(payload)
            return
        try:
            initial.set_result(self.spec.decode_response(payload))
        except ProtocolError as error:
            initial.set_exception(error)
            self._fail(error)
            self._connection.abandon(self._call_id)

    def _end(self) -> None:
        self._done = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self.initial is not None and not self.initial.done():
            self.initial.set_exception(error)
        if self._done:
            return
        self._done = True
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class PipeReader(Generic[T_co]):
    """An async iterator over a stream's items.

    Each item taken returns its size to the sender as credit, so a slow reader bounds
    what the sender buffers. ``await reader.aclose()`` stops the stream early: the
    producer's generator is closed. A reader dropped without ``aclose()`` (``async for``
    left by ``break``, then forgotten) stops its stream the same way once it is garbage.
    """

    __slots__ = ("__weakref__", "_state")

    def __init__(self, state: ReaderState) -> None:
        self._state = state
        state.watch(self)

    @property
    def spec(self) -> FunctionSpec:
        return self._state.spec

    @property
    def initial(self) -> asyncio.Future[Any] | None:
        return self._state.initial

    def __repr__(self) -> str:
        state = self._state
        done = "done" if state._done else "open"
        return (f"<PipeReader {state.spec.name} #{state._call_id} {done}, "
                f"{len(state._items)} queued>")

    def __aiter__(self) -> PipeReader[T_co]:
        return self

    def __anext__(self) -> Awaitable[T_co]:
        return self._state.next()

    async def aclose(self) -> None:
        """Stop the stream; items not yet read are dropped."""
        self._state._abort()

    async def __aenter__(self) -> PipeReader[T_co]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Credit:
    """Bytes the sender of a stream may still send before the reader grants more."""

    __slots__ = ("_loop", "_waiter", "available", "stopped")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.available = 0
        self.stopped = False
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        while self.available <= 0 and not self.stopped:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def grant(self, amount: int) -> None:
        self.available += amount
        self._wake()

    def stop(self) -> None:
        self.stopped = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
