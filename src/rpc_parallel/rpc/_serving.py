"""The serving side of a connection: what it serves and how an implementation runs.

``Serving`` (a connection's serving side: the peer's calls in progress, the runner that
serves rpc calls without a task per call, one-way acknowledgements), ``Implementation`` (a
served function: its spec and handler, and how it runs: on the loop, or in a thread),
``ServedStream`` (the serving side of a stream call), ``error_info`` (an exception as an
ERROR frame carries it), and the helpers that run a coroutine's first step inline
(``first_step`` / ``resume``) or iterate a plain generator in a thread. Imports nothing of
``connection``: ``Serving`` knows it as a ``ServingOwner``.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import types
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator
from concurrent.futures import Executor
from typing import Any, Protocol

import msgspec

from ._calling import cannot_send
from ._compat import enter_task as _enter_task  # What Python 3.12's eager tasks use.
from ._compat import leave_task as _leave_task
from ._segments import Segments, release_in
from .errors import ConnectionClosed, ProtocolError
from .frames import (
    CREDIT,
    END,
    ERROR,
    ERROR_TEXT_LIMIT,
    HEADER,
    HEADER_SIZE,
    LENGTH_OVERHEAD,
    QUERY,
    RESPONSE,
    ErrorInfo,
    MenuEntry,
    remote_error_info,
    safe_text,
    text_of,
)
from .functions import FunctionSpec
from .streams import Credit, PipeReader, ReaderState, StreamOwner


class Implementation:
    """A function this side serves: its spec and the callable that implements it.

    Coroutine functions and async generator functions run on the event loop; plain
    functions run in a thread (so CPU-bound code does not stall heartbeats): in
    ``executor``, or the loop's default one when it is None. A plain generator for a
    stream is advanced there too, one item at a time.
    """

    __slots__ = ("executor", "fast", "handler", "in_thread", "inline", "spec", "starts_nothing")

    def __init__(
        self, spec: FunctionSpec, handler: Callable[..., Any], executor: Executor | None = None
    ) -> None:
        self.spec = spec
        self.handler = handler
        self.executor = executor
        function = handler.__func__ if isinstance(handler, types.MethodType) else handler
        # An ``async def`` (or a method of one): calling it runs none of its code yet.
        self.starts_nothing = type(function) is types.FunctionType and bool(
            function.__code__.co_flags & inspect.CO_COROUTINE
        )
        unwrapped = inspect.unwrap(handler)
        self.in_thread = not (
            inspect.iscoroutinefunction(unwrapped) or inspect.isasyncgenfunction(unwrapped)
        )
        # An rpc whose first step can run inline, as the frame is read (``Serving.on_query``).
        self.inline = spec.kind == "rpc" and self.starts_nothing and not self.in_thread
        # Inline, and its arguments decode straight from the receive buffer: what
        # ``Serving.serve_queries`` serves in its loop.
        self.fast = self.inline and not spec._copy_payload
        if self.in_thread and spec.kind == "reverse_pipe":
            raise TypeError(f"{spec.name}: a reverse pipe must be implemented by an async def")

    def menu_entry(self) -> MenuEntry:
        spec = self.spec
        return MenuEntry(spec.name, spec.version, spec.kind, spec.digest, spec.signature)


class ServedStream:
    """The serving side of a pipe, state or reverse pipe call."""

    __slots__ = ("credit", "reader", "task")

    def __init__(self, credit: Credit | None, reader: ReaderState | None) -> None:
        self.credit = credit
        self.reader = reader  # A reverse pipe's items, as the connection feeds them.
        self.task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.reader is not None:
            self.reader._fail(asyncio.CancelledError())


def error_info(error: BaseException, limit: int = ERROR_TEXT_LIMIT) -> ErrorInfo:
    """``error`` as an ERROR frame carries it: every text safe to encode, each at most about
    ``limit`` characters (see ``frames.safe_text``)."""
    if isinstance(error, ProtocolError):
        return ErrorInfo("protocol", type(error).__qualname__, safe_text(text_of(error), limit), "")
    return remote_error_info(error, limit)


def unsendable_error_info(error: BaseException, failure: BaseException) -> ErrorInfo:
    """The last resort when even ``error_info(error)`` cannot be sent: its type name and why."""
    return ErrorInfo(
        "remote",
        safe_text(type(error).__qualname__, 200),
        f"(the error could not be sent: {type(failure).__name__}: "
        f"{safe_text(text_of(failure), 500)})",
        "",
    )


def cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()


NOT_STARTED: Any = object()


def first_step(handler: Callable[..., Any], args: tuple[Any, ...]) -> tuple[Any, Any]:
    """Call ``handler``; run the coroutine it returns up to its first suspension.

    Returns the coroutine and what it yielded (for ``resume``), or an awaitable that is not
    a coroutine and ``NOT_STARTED``; a coroutine that finished raises ``StopIteration``.
    """
    awaitable = handler(*args)
    if type(awaitable) is not types.CoroutineType:
        return awaitable, NOT_STARTED
    return awaitable, awaitable.send(None)


@types.coroutine
def resume(
    coroutine: types.CoroutineType[Any, Any, Any], waiting: Any, context: contextvars.Context
) -> Generator[Any, Any, Any]:
    """Await a coroutine that ``first_step`` started, each step in ``context``."""
    send, throw = coroutine.send, coroutine.throw
    while True:
        step: Callable[[Any], Any]
        try:
            value = yield waiting
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as error:
            step, value = throw, error
        else:
            step = send
        try:
            waiting = context.run(step, value)
        except StopIteration as done:
            return done.value


DONE: Any = object()
"""What ``drive`` yields when the coroutine it was sent has returned (its result in the box)."""
FAILED: Any = object()
"""What ``drive`` yields when the coroutine it was sent has raised (the error in the box)."""


def drive(box: list[Any]) -> Generator[Any, Any, None]:
    """Run each coroutine sent to it with ``yield from``: to its end, or its first suspension.

    A coroutine stepped with ``send`` reports its return with a ``StopIteration`` (made,
    raised, caught: about 150 ns a call); ``yield from`` takes the return value without one.
    So a call that finishes in its first step costs one ``send`` of this generator, which
    puts the result (or the exception) in ``box`` and yields ``DONE`` (or ``FAILED``), then
    waits for the next coroutine. If the coroutine suspends, this generator yields what it
    yielded and is that call's from then on (``resume_driven``); the serving side makes a
    new one. A ``BaseException`` that is not an ``Exception`` (nor ``CancelledError``)
    ends it, as it would end a task.
    """
    coroutine = yield
    while True:
        # (Not yielding inside the except clause: the next call would see this error as
        # the one being handled, the context of anything it raises.)
        try:
            box.append((yield from coroutine))
            signal = DONE
        except (Exception, asyncio.CancelledError) as error:
            box.append(error)
            signal = FAILED
        coroutine = yield signal


# Marked in place (types.coroutine sets the code's flag): it may ``yield from`` a coroutine.
types.coroutine(drive)


@types.coroutine
def resume_driven(
    driver: Generator[Any, Any, None], waiting: Any, context: contextvars.Context, box: list[Any]
) -> Generator[Any, Any, Any]:
    """Await a call whose coroutine ``drive`` started and that waits, each step in ``context``."""
    send, throw = driver.send, driver.throw
    while True:
        step: Callable[[Any], Any]
        try:
            value = yield waiting
        except GeneratorExit:
            driver.close()
            raise
        except BaseException as error:
            step, value = throw, error
        else:
            step = send
        waiting = context.run(step, value)
        if waiting is DONE:
            driver.close()
            return box.pop()
        if waiting is FAILED:
            driver.close()
            raise box.pop()


def as_async_iterator(
    value: Any, loop: asyncio.AbstractEventLoop, executor: Executor | None = None
) -> AsyncIterator[Any]:
    if isinstance(value, AsyncIterable):
        return aiter(value)
    return iterate_in_thread(iter(value), loop, executor)


async def iterate_in_thread(
    iterator: Any, loop: asyncio.AbstractEventLoop, executor: Executor | None = None
) -> AsyncIterator[Any]:
    done = object()
    try:
        while True:
            item = await loop.run_in_executor(executor, next, iterator, done)
            if item is done:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


OneWayErrorHandler = Callable[[FunctionSpec, BaseException], None]


ZERO_HEADER = bytes(HEADER_SIZE)
FLUSH_AT = 256 * 1024
"""The outgoing buffer is written at once when it holds this much (the connection's own)."""


class ServingOwner(StreamOwner, Protocol):
    """What the serving side needs of its connection (``Connection``)."""

    _close_reason: str | None
    _out: bytearray
    _error_text_limit: int
    _send_limit: int
    _flush_handle: Any
    _encoder: msgspec.msgpack.Encoder
    _segments: Segments | None
    _deferred: list[tuple[bytes, memoryview]]

    def _splice(self, begin: int) -> None:
        """Copy the arrays the encoder left out into the frame at ``begin`` of ``_out``."""
        ...

    def _too_large(self, length: int) -> Exception:
        """The error for a frame of ``length`` bytes over the limit."""
        ...

    def _wrote(self) -> None:
        """A frame was appended to the outgoing buffer: write it, now or soon."""

    def _write(self, message_type: int, call_id: int, argument: int, value: Any = ...) -> int:
        """Append one frame to the outgoing buffer; return the payload size."""
        ...

    def _flush(self) -> None:
        """Write the outgoing buffer now."""

    async def _send_item(
        self, spec: FunctionSpec, call_id: int, item: Any, credit: Credit, serving: bool = False
    ) -> bool:
        """Send one stream item once credit allows; False if the stream has stopped."""
        ...


class Serving:
    """The serving side of one connection: runs the peer's calls and answers them.

    ``incoming`` maps the call id of each rpc or stream call in progress to what serves it
    (a task, or a ``ServedStream``); the connection reads it on the per-frame path (items,
    credit, END and ABORT for served streams), so it is one dict for the connection's life,
    never replaced. rpc calls to coroutine implementations need no task of their own: the
    runner (``_run_queued``) serves them in turn, and an idle runner lends itself to a call
    that arrives (``on_query``). Everything this side writes after the connection has
    closed is discarded by the connection's flush, so answers need not check for it.
    """

    def __init__(
        self,
        owner: ServingOwner,
        implementations: list[Implementation],
        context: contextvars.Context,
        on_one_way_error: OneWayErrorHandler | None,
    ) -> None:
        self._owner = owner
        self.loop = owner.loop
        self._write = owner._write  # Bound once: the per-call path makes no extra hop.
        self._served = implementations
        self._context = context
        self._on_one_way_error = on_one_way_error
        self.incoming: dict[int, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # The runners.
        self._one_way_tasks: set[asyncio.Task[Any]] = set()
        """One-way calls received. Closing from this side cancels them; one that arrived
        before the peer closed or vanished is still served, for up to heartbeat_timeout."""
        self._one_way_finished = 0  # Served, not yet acknowledged.
        # rpc calls to coroutine implementations wait here for the runner task (_run_queued).
        self._queued: deque[tuple[int, Implementation, tuple[Any, ...]]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._runner_idle: asyncio.Future[Any] | None = None  # Set to wake an idle runner.
        self._entered: asyncio.Task[None] | None = None
        """The idle runner while it is the current task for the rest of a read (``_enter``);
        the connection calls ``leave`` once it has dispatched what it read."""
        self._new_driver()

    def _new_driver(self) -> None:
        """A fresh ``drive`` generator (the last one stays with a call that waits)."""
        self._box: list[Any] = []
        self._driver = drive(self._box)
        self._driver.send(None)
        self._drive = self._driver.send

    def _enter(self) -> bool:
        """Make the idle runner the current task (as Python 3.12's eager tasks do) until
        ``leave``: once per read, not once per call. False if a task is running already
        (called from inside a task): the call is queued instead."""
        runner = self._runner
        assert runner is not None  # (An idle runner exists.)
        try:
            _enter_task(self.loop, runner)
        except RuntimeError:
            return False
        self._entered = runner
        return True

    def leave(self) -> None:
        """No task is current any more (the end of a read, or before other frames)."""
        entered = self._entered
        if entered is not None:
            self._entered = None
            _leave_task(self.loop, entered)

    def menu(self) -> list[MenuEntry]:
        """What this side serves, as its MENU frame lists it."""
        return [i.menu_entry() for i in self._served]

    # Per-frame hot path: kept as one function on purpose (longer than the ~40-line rule);
    # splitting it into steps adds a Python call per frame, which the benchmarks measure.
    def serve_queries(self, view: memoryview, start: int, end: int, limit: int) -> int:
        """Serve the run of QUERY frames at ``start`` in ``view`` (up to ``end``); return
        where it stopped: at the first frame that is not a complete QUERY of at most
        ``limit`` bytes (the connection's frame loop takes that one), or once the
        connection has closed. The connection calls it with at least one such frame.

        ``on_query`` for many frames in one call: what every call needs is looked up once
        per run, not once per call, and an rpc call to an ``async def`` is served right
        here while the runner is idle (``on_query``'s inline path). Other frames go to
        ``on_query``; after one, what it may have changed (the runner handed to a call that
        waits, the current task left) is looked up again.
        """
        owner = self._owner
        served = self._served
        base = self._context
        encoder = owner._encoder
        segments = owner._segments
        send_limit = owner._send_limit
        unpack = HEADER.unpack_from
        pack = HEADER.pack_into
        inline = self._runner_idle is not None and (self._entered is not None or self._enter())
        drive = self._drive
        box_pop = self._box.pop
        while end - start >= HEADER_SIZE and owner._close_reason is None:
            length, message_type, call_id, index = unpack(view, start)
            frame_end = start + 4 + length
            if message_type != QUERY or length > limit or length < LENGTH_OVERHEAD or frame_end > end:
                break
            payload = view[start + HEADER_SIZE : frame_end]
            start = frame_end
            implementation: Implementation | None
            try:
                implementation = served[index]
            except IndexError:
                implementation = None  # (on_query answers it.)
            if not inline or implementation is None or not implementation.fast:
                self.on_query(call_id, index, payload)
                inline = self._runner_idle is not None and (
                    self._entered is not None or self._enter()
                )
                drive = self._drive
                box_pop = self._box.pop
                continue
            spec = implementation.spec
            try:
                args = spec.arguments_decoder.decode(payload)
            except (msgspec.MsgspecError, UnicodeDecodeError) as error:
                # Not decoded again: a shared-memory segment is taken once.
                self._refuse(call_id, spec, spec.arguments_failure(error, payload))
                inline = self._enter()  # (_refuse left the runner; it is still idle.)
                continue
            context = base.copy()
            try:
                waiting = context.run(drive, implementation.handler(*args))
            except (Exception, asyncio.CancelledError) as error:  # From calling it.
                self._respond_error(call_id, error)
                continue
            except BaseException:  # (KeyboardInterrupt, SystemExit): the driver ended.
                self._new_driver()
                raise
            if waiting is DONE:
                # (_respond and the owner's _write of a RESPONSE, inline: keep in step.)
                out = owner._out  # (Taken after the call: a flush in it makes a new one.)
                begin = len(out)
                out += ZERO_HEADER
                mark = segments.mark if segments is not None else 0
                try:
                    encoder.encode_into(box_pop(), out, -1)
                    if owner._deferred:
                        owner._splice(begin)
                    length = len(out) - begin - 4
                    if length > send_limit:
                        raise owner._too_large(length)
                except BaseException as error:
                    del out[begin:]
                    owner._deferred.clear()
                    if segments is not None:
                        segments.discard_after(mark)  # What this answer had lent.
                    if not isinstance(error, Exception):
                        raise
                    self._respond_error(call_id, cannot_send(spec, "result", error, serving=True))
                    continue
                pack(out, begin, length, RESPONSE, call_id, 0)
                if len(out) >= FLUSH_AT:
                    owner._wrote()
                continue
            if waiting is FAILED:
                self._respond_error(call_id, box_pop())
                continue
            # It waits: the runner becomes its task, the driver stays with it; what comes
            # next is queued for a new runner (on_query).
            self._hand_over(call_id, implementation, waiting, context)
            inline = False
        if owner._flush_handle is None:
            owner._wrote()
        return start

    def _hand_over(
        self, call_id: int, implementation: Implementation, waiting: Any,
        context: contextvars.Context,
    ) -> None:
        """A call served inline waits: the idle runner becomes its task (and the driver
        that started it stays with it); a new runner serves what comes next."""
        awaitable = resume_driven(self._driver, waiting, context, self._box)
        self._new_driver()
        runner, idle = self._runner, self._runner_idle
        assert runner is not None and idle is not None  # (An idle runner exists.)
        self.leave()
        self._runner = self._runner_idle = None
        self.incoming[call_id] = runner
        idle.set_result((call_id, implementation, awaitable, NOT_STARTED, context))

    # Per-frame hot path: kept as one function on purpose (longer than the ~40-line rule);
    # splitting it into steps adds a Python call per frame, which the benchmarks measure.
    def on_query(self, call_id: int, index: int, payload: memoryview) -> None:
        """A QUERY frame: decode the arguments and serve the call.

        An rpc call to an ``async def`` is served inline when the runner is idle: its first
        step runs now, with the runner as the current task (as Python 3.12's eager tasks
        do), so most calls are answered here, without a task or a loop iteration of their
        own. One that waits is handed to the runner, which becomes its task (the task
        ``asyncio.current_task()``, ``asyncio.timeout`` and task groups saw in the first
        step). Otherwise the call is queued for the runner (``_run_queued``), or, for the
        other kinds and for plain functions, gets a task of its own (``_start_task``).
        """
        try:
            implementation: Implementation = self._served[index]
        except IndexError:
            release_in(payload)
            if call_id:
                self._write(ERROR, call_id, 0,
                            ErrorInfo("protocol", "ProtocolError", f"no function at index {index}", ""))
            else:
                self._one_way_done()
            return
        spec = implementation.spec
        args: Any = None
        if not spec._copy_payload:  # (spec.decode_arguments, inline for the common case)
            try:
                args = spec.arguments_decoder.decode(payload)
            except (msgspec.MsgspecError, UnicodeDecodeError) as error:
                # Not decoded again: a shared-memory segment is taken once.
                self._refuse(call_id, spec, spec.arguments_failure(error, payload))
                return
        if args is None:
            try:
                args = spec.decode_arguments(payload)
            except ProtocolError as error:
                self._refuse(call_id, spec, error)
                return
        if implementation.inline:
            idle = self._runner_idle
            if idle is not None and (self._entered is not None or self._enter()):
                context = self._context.copy()
                try:
                    waiting = context.run(self._drive, implementation.handler(*args))
                except (Exception, asyncio.CancelledError) as error:  # From calling it.
                    self._respond_error(call_id, error)
                    return
                except BaseException:  # (KeyboardInterrupt, SystemExit): the driver ended.
                    self._new_driver()
                    raise
                if waiting is DONE:
                    # (One call in this read: the general answer's path costs little here;
                    # serve_queries writes a run's answers inline.)
                    self._respond(spec, call_id, self._box.pop())
                    return
                if waiting is FAILED:
                    self._respond_error(call_id, self._box.pop())
                    return
                # It waits: the runner becomes its task, the driver stays with it.
                self._hand_over(call_id, implementation, waiting, context)
                return
        if spec.kind == "rpc" and not implementation.in_thread:
            self._queued.append((call_id, implementation, args))
            if self._runner is None:
                self._start_runner()
            elif self._runner_idle is not None:
                if not self._runner_idle.done():
                    self._runner_idle.set_result(None)
                self._runner_idle = None
            return
        self._start_task(call_id, implementation, args)

    def _refuse(self, call_id: int, spec: FunctionSpec, error: ProtocolError) -> None:
        """A call whose arguments do not decode: answer (or report) the error."""
        self.leave()  # (The layer above's on_one_way_error sees no task, as outside a read.)
        if spec.kind == "one_way":
            self._one_way_done()
            self._one_way_failed(spec, error)
        elif call_id:
            self._respond_error(call_id, error)

    def _start_task(self, call_id: int, implementation: Implementation, args: tuple[Any, ...]) -> None:
        """Serve a call in a task of its own: an rpc in a thread, a one-way call, a stream."""
        context = self._context.copy()
        kind = implementation.spec.kind
        loop = self.loop
        if kind == "rpc":
            self.incoming[call_id] = loop.create_task(
                self._answer(call_id, implementation, self._run(implementation, args)),
                context=context,
            )
        elif kind == "one_way":
            task = loop.create_task(self._serve_one_way(implementation, args), context=context)
            self._one_way_tasks.add(task)
            task.add_done_callback(self._one_way_done)
        elif kind == "reverse_pipe":
            served = ServedStream(None, ReaderState(self._owner, call_id, implementation.spec))
            self.incoming[call_id] = served
            self._write(CREDIT, call_id, self._owner.settings.stream_window)
            served.task = loop.create_task(
                self._serve_reverse_pipe(call_id, implementation, args, served), context=context
            )
        else:
            served = ServedStream(Credit(loop), None)
            self.incoming[call_id] = served
            served.task = loop.create_task(
                self._serve_stream(call_id, implementation, args, served), context=context
            )

    async def _run(self, implementation: Implementation, args: tuple[Any, ...]) -> Any:
        if implementation.in_thread:
            function = functools.partial(
                contextvars.copy_context().run, implementation.handler, *args
            )
            return await self.loop.run_in_executor(implementation.executor, function)
        return await implementation.handler(*args)

    async def _answer(self, call_id: int, implementation: Implementation, call: Awaitable[Any]) -> None:
        """Await a served rpc call and send its result or error (unless it was abandoned)."""
        try:
            result = await call
        except asyncio.CancelledError:
            self.incoming.pop(call_id, None)
            raise
        except Exception as error:
            self.incoming.pop(call_id, None)
            self._respond_error(call_id, error)
            return
        if self.incoming.pop(call_id, None) is not None:
            self._respond(implementation.spec, call_id, result)

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
        itself to on_query). A call that has to wait keeps this task as its task to the
        end (``asyncio.current_task()``, ``asyncio.timeout`` and task groups see one task
        for the whole call, as with a task per call; ABORT cancels it), and a new runner
        takes the rest of the queue.
        """
        task = asyncio.current_task()
        assert task is not None
        queue = self._queued
        base = self._context
        owner = self._owner
        try:
            while owner._close_reason is None:
                if not queue:
                    if owner._out:
                        owner._flush()  # Now, rather than one loop iteration later.
                    idle = self._runner_idle = self.loop.create_future()
                    try:
                        job = await idle
                    except asyncio.CancelledError:
                        if not idle.done() or idle.cancelled() or idle.result() is None:
                            raise
                        # Cancelled once on_query had handed over a call: pass the
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
                        args = ()  # not kept while idle (an array's segment goes back now)
                        continue
                    except (Exception, asyncio.CancelledError) as error:
                        # A CancelledError here comes from the implementation itself
                        # (nothing has cancelled this task): answer it, and go on.
                        self._respond_error(call_id, error)
                        args = ()
                        continue
                    self._runner = None
                    if queue:
                        self._start_runner()
                    self.incoming[call_id] = task
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
        try:
            self._write(RESPONSE, call_id, 0, result)
        except Exception as error:  # TypeError, MessageTooLarge, or a register_type hook's
            self._respond_error(call_id, cannot_send(spec, "result", error, serving=True))

    def _respond_error(self, call_id: int, error: BaseException) -> None:
        """Answer a call with ``error``; never fails: texts are made safe and cut to fit the
        message limit, and if the record still cannot be sent (a ``register_type`` hook, say)
        a bare substitute naming the type is sent instead."""
        owner = self._owner
        if owner._close_reason is None:
            try:
                self._write(ERROR, call_id, 0, error_info(error, owner._error_text_limit))
            except Exception as failure:
                self._write(ERROR, call_id, 0, unsendable_error_info(error, failure))

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

    def _one_way_done(self, task: asyncio.Task[Any] | None = None) -> None:
        """A one-way call has been served (or refused): acknowledge it soon, with others."""
        if task is not None:
            self._one_way_tasks.discard(task)
        if self._one_way_finished == 0:
            self.loop.call_soon(self._acknowledge_one_way)
        self._one_way_finished += 1

    def _acknowledge_one_way(self) -> None:
        count, self._one_way_finished = self._one_way_finished, 0
        if count and self._owner._close_reason is None:
            self._write(CREDIT, 0, count)

    def _still_serving(self, call_id: int, served: ServedStream) -> bool:
        """Whether ``served`` still serves ``call_id`` (not abandoned, not closed)."""
        return self.incoming.get(call_id) is served

    def _forget(self, call_id: int, served: ServedStream) -> None:
        if self.incoming.get(call_id) is served:
            del self.incoming[call_id]

    async def _serve_stream(
        self, call_id: int, implementation: Implementation, args: tuple[Any, ...], served: ServedStream
    ) -> None:
        spec = implementation.spec
        credit = served.credit
        assert credit is not None
        owner = self._owner
        iterator: Any = None
        try:
            if spec.kind == "state":
                initial, updates = await self._run(implementation, args)
                self._respond(spec, call_id, initial)
            else:
                updates = implementation.handler(*args)
            iterator = as_async_iterator(updates, self.loop, implementation.executor)
            async for item in iterator:
                if not await owner._send_item(spec, call_id, item, credit, serving=True):
                    return
            if owner._close_reason is None and self._still_serving(call_id, served):
                self._write(END, call_id, 0)
        except (asyncio.CancelledError, ConnectionClosed):
            pass
        except Exception as error:
            if self._still_serving(call_id, served):
                self._respond_error(call_id, error)
        finally:
            self._forget(call_id, served)
            close = getattr(iterator, "aclose", None)
            if close is not None:
                await close()

    async def _serve_reverse_pipe(
        self, call_id: int, implementation: Implementation, args: tuple[Any, ...], served: ServedStream
    ) -> None:
        reader = served.reader
        assert reader is not None
        try:
            result = await implementation.handler(*args, PipeReader(reader))
        except asyncio.CancelledError:
            pass
        except Exception as error:
            if self._still_serving(call_id, served):
                self._respond_error(call_id, error)
        else:
            if self._still_serving(call_id, served):
                self._respond(implementation.spec, call_id, result)
        finally:
            self._forget(call_id, served)
            reader._end()

    def end(self, closing_here: bool, grace: float) -> list[asyncio.Task[Any]]:
        """The connection closed: cancel what serves the peer's calls (one-way calls the
        peer sent before it went run on, for up to ``grace`` seconds); return every task
        still to wait for."""
        incoming = list(self.incoming.values())
        self.incoming.clear()
        tasks = [*self._tasks, *self._one_way_tasks]
        one_way = list(self._one_way_tasks)
        if closing_here:
            for task in one_way:
                task.cancel()
        elif one_way:
            # Sent before the peer closed or vanished: they run, within a bound.
            self.loop.call_later(grace, cancel_all, one_way)
        for served in incoming:
            served.cancel()
            tasks.append(served if isinstance(served, asyncio.Task) else served.task)
        for task in self._tasks:
            task.cancel()
        return [t for t in tasks if t is not None]
