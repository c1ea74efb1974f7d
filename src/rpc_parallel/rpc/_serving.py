"""The serving side of a connection: what it serves and how an implementation runs.

``Implementation`` (a served function: its spec and handler, and how it runs: on the loop, or
in a thread), ``ServedStream`` (the serving side of a stream call), ``error_info`` (an
exception as an ERROR frame carries it), and the helpers that run a coroutine's first step
inline (``first_step`` / ``resume``) or iterate a plain generator in a thread. Imports
nothing of ``connection``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import types
from collections.abc import AsyncIterable, AsyncIterator, Callable, Generator
from concurrent.futures import Executor
from typing import Any

from .errors import ProtocolError
from .frames import ErrorInfo, MenuEntry, remote_error_info
from .functions import FunctionSpec
from .streams import Credit, PipeReader


class Implementation:
    """A function this side serves: its spec and the callable that implements it.

    Coroutine functions and async generator functions run on the event loop; plain
    functions run in a thread (so CPU-bound code does not stall heartbeats): in
    ``executor``, or the loop's default one when it is None. A plain generator for a
    stream is advanced there too, one item at a time.
    """

    __slots__ = ("executor", "handler", "in_thread", "spec", "starts_nothing")

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
        if self.in_thread and spec.kind == "reverse_pipe":
            raise TypeError(f"{spec.name}: a reverse pipe must be implemented by an async def")

    def menu_entry(self) -> MenuEntry:
        spec = self.spec
        return MenuEntry(spec.name, spec.version, spec.kind, spec.digest, spec.signature)


class ServedStream:
    """The serving side of a pipe, state or reverse pipe call."""

    __slots__ = ("credit", "reader", "task")

    def __init__(self, credit: Credit | None, reader: PipeReader[Any] | None) -> None:
        self.credit = credit
        self.reader = reader
        self.task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.reader is not None:
            self.reader._fail(asyncio.CancelledError())


def error_info(error: BaseException) -> ErrorInfo:
    if isinstance(error, ProtocolError):
        return ErrorInfo("protocol", type(error).__qualname__, str(error), "")
    return remote_error_info(error)


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
