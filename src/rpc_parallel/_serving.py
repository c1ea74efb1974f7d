"""What a worker serves besides its own functions, and how it ends.

The built-in functions (connection state, shutdown, close_server, log subscription), the
broadcast of ``logging`` records to subscribers, the exit request, and reports of failures
outside any call. Imported by the worker type and the worker process; imports neither.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from ._builtins import (
    CLOSE_SERVER,
    INIT_CONNECTION,
    SHUTDOWN,
    SUBSCRIBE_LOGS,
    LogRecord,
)
from ._state import process
from .rpc import Implementation, Server, current_connection
from .rpc.frames import ErrorInfo, remote_error_info

logger = logging.getLogger("rpc_parallel")


class WorkerInstance(Protocol):
    """What the built-ins need of a worker instance (an ``rp.Worker``)."""

    _rpc_parallel_server: Server | None

    async def init_connection_state(self, arg: Any, /) -> Any: ...


_fatal_reporters: weakref.WeakKeyDictionary[WorkerInstance, Callable[[ErrorInfo], None]] = (
    weakref.WeakKeyDictionary()
)


def set_fatal_reporter(instance: WorkerInstance, report: Callable[[ErrorInfo], None]) -> None:
    """How ``report_fatal`` tells the master of ``instance``'s failures (the worker process
    sets it for the instance it serves; elsewhere failures are logged)."""
    _fatal_reporters[instance] = report


_exit: asyncio.Future[int] | None = None


def set_exit_future(future: asyncio.Future[int]) -> None:
    """The worker process's main loop ends when ``future`` is set (``request_exit``)."""
    global _exit
    _exit = future


def request_exit(code: int) -> None:
    """End the worker after the current call's answer has been sent."""
    exit_future = _exit
    if exit_future is not None and not exit_future.done():
        def finish() -> None:
            if not exit_future.done():
                exit_future.set_result(code)

        exit_future.get_loop().call_soon(finish)


kept_servers: set[Server] = set()
"""Servers started by ``Worker.serve``: kept alive until ``close_server`` (otherwise the
garbage collector may close a listening socket nobody references, as uvloop does)."""


# ---------------------------------------------------------------------- built-ins


class _LogBroadcast(logging.Handler):
    """Sends this process's ``logging`` records to every subscriber."""

    def __init__(self, worker_name: str) -> None:
        super().__init__(logging.NOTSET)
        self.worker_name = worker_name
        self.subscribers: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[LogRecord]]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.subscribers:
            return
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:
            message = str(record.msg)
        item = LogRecord(worker=self.worker_name, logger=record.name, level=record.levelno,
                         level_name=record.levelname, message=message, created=record.created)
        for loop, queue in list(self.subscribers):
            try:
                loop.call_soon_threadsafe(_offer, queue, item)
            except RuntimeError:
                self.subscribers.discard((loop, queue))


class _LogSubscription:
    """One subscriber's records; registered from creation, so nothing logged after the
    subscriber's ``subscribe_logs()`` returned is missed."""

    def __init__(self, handler: _LogBroadcast) -> None:
        self._handler = handler
        self._queue: asyncio.Queue[LogRecord] = asyncio.Queue(maxsize=10_000)
        self._entry = (asyncio.get_running_loop(), self._queue)
        handler.subscribers.add(self._entry)

    def __aiter__(self) -> _LogSubscription:
        return self

    async def __anext__(self) -> LogRecord:
        return await self._queue.get()

    async def aclose(self) -> None:
        self._handler.subscribers.discard(self._entry)


def _offer(queue: asyncio.Queue[LogRecord], item: LogRecord) -> None:
    if not queue.full():
        queue.put_nowait(item)


_log_broadcast: _LogBroadcast | None = None


def _log_handler(name: str) -> _LogBroadcast:
    global _log_broadcast
    if _log_broadcast is None:
        _log_broadcast = _LogBroadcast(name)
        logging.getLogger().addHandler(_log_broadcast)
    return _log_broadcast


def builtin_implementations(instance: WorkerInstance) -> list[Implementation]:
    async def init_connection(arg: Any) -> None:
        connection = current_connection.get()
        connection.user_data = await instance.init_connection_state(arg)

    async def shutdown() -> None:
        request_exit(0)

    async def close_server() -> None:
        server = instance._rpc_parallel_server
        if server is not None:
            server.stop_accepting()
            kept_servers.discard(server)

    async def subscribe_logs() -> tuple[str, AsyncIterator[LogRecord]]:
        handler = _log_handler(process().worker_name or type(instance).__name__)
        return handler.worker_name, _LogSubscription(handler)

    return [
        Implementation(INIT_CONNECTION, init_connection),
        Implementation(SHUTDOWN, shutdown),
        Implementation(CLOSE_SERVER, close_server),
        Implementation(SUBSCRIBE_LOGS, subscribe_logs),
    ]


def report_fatal(instance: WorkerInstance | None, error: BaseException, context: str) -> None:
    """A failure outside any call: tell the master (in a worker process) and exit."""
    info = remote_error_info(error)
    report = ErrorInfo("remote", info.type_name, f"{context}: {info.type_name}: {info.message}",
                       info.traceback)
    on_fatal = _fatal_reporters.get(instance) if instance is not None else None
    if on_fatal is not None:
        on_fatal(report)
    else:
        logger.error("%s", report.message, exc_info=error)
