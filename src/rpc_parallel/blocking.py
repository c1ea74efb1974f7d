"""``rp.blocking``: workers from code that is not async (scripts, notebooks, a REPL).

    with rp.blocking.spawn(Adder, 1) as w:
        w.run(Adder.add, 2)  # 3

The calls run on an event loop the library owns, in a background (daemon) thread started by
the first ``spawn``; the calling thread waits for each result. Typed like the async API with
the awaitable removed: ``w.run(f, ...)`` gives what ``await handle.run(f, ...)`` gives, and a
stream is a plain iterator (``PipeIterator``). Leaving the ``with`` block closes the worker;
at interpreter exit every worker still open is closed. Works in Jupyter too (the notebook's
own loop is not used). Ctrl-C while waiting cancels the call.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ._builtins import LogRecord
from ._functions import Function, Pipe, Rpc, Runnable, StateFunction
from ._handle import Connection as AsyncConnection
from ._handle import WorkerHandle as AsyncWorkerHandle
from ._master import existing_master
from ._worker_type import Worker
from .errors import Error
from .pool._pool import Spawnable
from .rpc import PipeReader
from .rpc.loop import new_event_loop

__all__ = ["Connection", "PipeIterator", "WorkerHandle", "spawn"]

W = TypeVar("W", bound="Worker[Any]")
W_co = TypeVar("W_co", covariant=True)
I_contra = TypeVar("I_contra", contravariant=True)
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
T = TypeVar("T")
U = TypeVar("U")


class _LibraryLoop:
    """The event loop ``rp.blocking`` runs everything on, in a daemon thread of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="rpc_parallel-blocking", daemon=True
                ).start()
                self._loop = loop
                atexit.register(self._close)
            return self._loop

    def wait(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the library's loop; wait for its result in this thread."""
        loop = self.loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coroutine.close()
            raise Error("rp.blocking cannot be used from the library's own event loop "
                        "(it would wait for itself): use the async API there")
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # Ctrl-C while waiting: the call is cancelled, not left running.
            raise

    def _close(self) -> None:
        """At interpreter exit: close the workers still open, stop the loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Exiting anyway: should this fail, the workers exit with their master.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_close_master(), loop).result(timeout=30.0)
        loop.call_soon_threadsafe(loop.stop)


async def _close_master() -> None:
    master = existing_master()
    if master is not None:
        await master.close()


_library_loop = _LibraryLoop()


class PipeIterator(Generic[T]):
    """A stream from a worker as a plain iterator: ``for item in w.run(W.f, ...)``.

    ``close()`` (or leaving a ``with`` block) stops the stream early, as ``aclose`` does.
    """

    def __init__(self, reader: PipeReader[T]) -> None:
        self._reader = reader

    def __iter__(self) -> PipeIterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return _library_loop.wait(_next(self._reader))
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        _library_loop.wait(self._reader.aclose())

    def __enter__(self) -> PipeIterator[T]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _next(reader: PipeReader[T]) -> T:
    return await reader.__anext__()


def _run(target: Any, function: Function[Any], args: tuple[Any, ...],
         kwargs: dict[str, Any]) -> Any:
    """``await target.run(function, ...)`` on the library's loop; streams as iterators."""
    result = _library_loop.wait(target.run(function, *args, **kwargs))
    if isinstance(function, Pipe):
        return PipeIterator(result)
    if isinstance(function, StateFunction):
        initial, updates = result
        return initial, PipeIterator(updates)
    return result


async def _submitted(target: Any, function: Function[Any], args: tuple[Any, ...],
                     kwargs: dict[str, Any]) -> Any:
    return await target.submit(function, *args, **kwargs)


class _Runner(Generic[W_co]):
    """``run`` and ``submit`` without ``await``, for a blocking handle or connection over
    ``_target``, the async one on the library's loop."""

    _target: AsyncWorkerHandle[W_co] | AsyncConnection[W_co]

    @overload
    def run(
        self, function: Pipe[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> PipeIterator[R]: ...
    @overload
    def run(
        self, function: StateFunction[W_co, P, S, U], /, *args: P.args, **kwargs: P.kwargs
    ) -> tuple[S, PipeIterator[U]]: ...
    @overload
    def run(
        self, function: Runnable[W_co, P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T: ...
    def run(self, function: Function[Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on the worker and wait for its result (typed like
        ``await handle.run``, with streams as ``PipeIterator``)."""
        return _run(self._target, function, args, kwargs)

    def submit(
        self, function: Rpc[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[R]:
        """Start an ``rpc`` call now; a ``concurrent.futures.Future`` of its result (many
        calls in flight from code that is not async: ``[f.result() for f in futures]``)."""
        return asyncio.run_coroutine_threadsafe(
            _submitted(self._target, function, args, kwargs), _library_loop.loop()
        )


class WorkerHandle(_Runner[W_co]):
    """A running worker, used without ``await``; ``handle`` is its async ``rp.WorkerHandle``
    (to pass to another worker, say)."""

    def __init__(self, handle: AsyncWorkerHandle[W_co]) -> None:
        self.handle = self._target = handle
        self.id = handle.id
        self.name = handle.name
        self.pid = handle.pid
        self.host = handle.host

    def __repr__(self) -> str:
        return f"<rp.blocking.WorkerHandle {self.name} pid={self.pid} host={self.host}>"


    def connect(self, arg: object = None) -> Connection[W_co]:
        """A new connection to the worker, with connection state from
        ``init_connection_state(arg)``."""
        return Connection(_library_loop.wait(self.handle.connect(arg)))

    def subscribe_logs(self) -> PipeIterator[LogRecord]:
        """The worker's ``logging`` records from now on, as an iterator."""
        return PipeIterator(_library_loop.wait(self.handle.subscribe_logs()))

    def close_server(self) -> None:
        """Stop the worker accepting new connections; existing ones go on."""
        _library_loop.wait(self.handle.close_server())

    def close(self) -> None:
        """Close the handle (the worker exits unless spawned to outlive it)."""
        _library_loop.wait(self.handle.close())

    def shutdown(self) -> None:
        """End the worker process, whatever its ``shutdown_on`` mode."""
        _library_loop.wait(self.handle.shutdown())

    def __enter__(self) -> WorkerHandle[W_co]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class Connection(_Runner[W_co]):
    """An extra connection to a worker (``WorkerHandle.connect``), used without ``await``;
    ``connection`` is its async ``rp.Connection``."""

    def __init__(self, connection: AsyncConnection[W_co]) -> None:
        self.connection = self._target = connection
        self.name = connection.name

    def __repr__(self) -> str:
        return f"<rp.blocking.Connection to {self.name}>"


    def close(self) -> None:
        """Close this connection (the worker goes on)."""
        _library_loop.wait(self.connection.close())

    def __enter__(self) -> Connection[W_co]:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def spawn(
    worker: Spawnable[W, I_contra], init_arg: I_contra, /, **spawn_options: Any
) -> WorkerHandle[W]:
    """Start a worker (``worker.spawn(init_arg, **spawn_options)``) on the library's loop and
    return its handle once ``init_worker_state`` has finished."""
    spawn_function: Any = worker.spawn
    return WorkerHandle(_library_loop.wait(spawn_function(init_arg, **spawn_options)))
