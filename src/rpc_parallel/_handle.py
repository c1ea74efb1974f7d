"""Handles to running workers and extra connections to them: running their functions.

``WorkerHandle`` and ``Connection`` share ``_Runner._run`` / ``_submit`` (bound as their own
``run`` / ``submit``, with one signature each: ``run`` takes any ``Runnable``); a spawned worker's
handle owns its ``Supervisor`` (given by the spawn; imported here for its type only, as a
worker process, which imports this module, supervises nothing). Imports the RPC layer; knows
nothing of worker classes (a handle's type parameter is any worker type).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import types
from collections.abc import Callable
from threading import get_ident
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, Self, TypeVar

from ._builtins import (
    CLOSE_SERVER,
    INIT_CONNECTION,
    SHUTDOWN,
    SUBSCRIBE_LOGS,
    LogRecord,
    ShutdownOn,
)
from ._functions import Function, Rpc, Runnable
from ._network import alternatives
from ._state import process
from .errors import ConnectionClosed, Error, WorkerDied
from .rpc import Connection as RpcConnection
from .rpc import HandshakeError, PipeReader
from .rpc.connection import TranslateClosed
from .rpc.frames import ErrorInfo
from .rpc.functions import register_type
from .rpc.transport import connect

if TYPE_CHECKING:
    from ._supervisor import Supervisor

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _in_own_loop(connection: RpcConnection) -> bool:
    """Whether the running loop is ``connection``'s: exact, but about 130 ns a call
    (``asyncio.get_running_loop`` asks the kernel for the process id), so ``_run`` and
    ``_submit`` ask it only when their cheap test (this thread made the connection, in
    this process, and its loop is running) does not already say yes."""
    return connection.loop is asyncio.get_running_loop()


# Handles and connections are covariant: a WorkerHandle[Derived] runs every function of Base
# (the functions are contravariant in their worker type), so it is a WorkerHandle[Base].
W_co = TypeVar("W_co", covariant=True)
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

def describe_loop(loop: asyncio.AbstractEventLoop) -> str:
    """An event loop, for an error message: its class, its id and whether it still runs."""
    state = "closed" if loop.is_closed() else "running" if loop.is_running() else "stopped"
    return f"{type(loop).__name__} at {id(loop):#x}, {state}"


def _public_method(function: Callable[..., Any], owner: str, name: str) -> Callable[..., Any]:
    """``function`` under the public name ``owner.name``: what Python shows of it (a
    "coroutine 'WorkerHandle.run' was never awaited" warning, ``help``) names the class the
    user holds, not the private base that implements it. A copy, not a wrapper: no call more."""
    copy = types.FunctionType(
        function.__code__, function.__globals__, name, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__ = function.__kwdefaults__
    copy.__doc__ = function.__doc__
    copy.__qualname__ = f"{owner}.{name}"
    copy.__module__ = "rpc_parallel"
    return copy


def _on_own_loop(connection: RpcConnection) -> bool:
    """Whether the running loop is ``connection``'s. Cheap and sure when the connection's
    thread, whose loop is running, in the process that made it, is this one (decision
    0026); else the exact test (``_in_own_loop``) decides."""
    return (
        connection.thread == get_ident() and connection.pid == _pid
        and connection.loop.is_running()
    ) or _in_own_loop(connection)


class _Runner(Generic[W_co]):
    """Running functions of a ``W`` worker: ``await x.run(W.f, *args, **kwargs)``, for
    ``WorkerHandle`` and ``Connection``, which bind ``run`` and ``submit`` under their names.
    """

    name: str
    _ready: RpcConnection | None = None
    """The connection to use without waiting, if there is one (a spawned worker's link
    until the handle closes; an extra connection's own)."""

    async def _rpc_connection(self) -> RpcConnection:
        raise NotImplementedError

    async def _translate(self, error: ConnectionClosed, function: str) -> BaseException:
        """The error a call of ``function`` fails with when its connection ended with
        ``error``: already a ``WorkerDied``, or what ``_death`` makes of it."""
        if isinstance(error, WorkerDied):
            return error
        return (await self._death(error))(function)

    async def _death(self, error: ConnectionClosed) -> Callable[[str], BaseException]:
        return lambda function: error

    async def _run(self, function: Function[Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on the worker; the result's type follows the function's kind."""
        # Each public class binds this as its ``run`` (``_public_method``).
        try:
            spec = function._spec or function.spec
        except AttributeError:
            raise TypeError(
                f"run() takes a worker function (declared with @rp.rpc, @rp.pipe, ...), "
                f"got {type(function).__qualname__}"
            ) from None
        connection = self._ready or await self._rpc_connection()
        if not _on_own_loop(connection):
            raise self._other_loop(connection.loop)
        try:
            kind = spec.kind
            if kind == "rpc":
                # Exactly ``rpc.Connection.call``'s steps, inline (no coroutine more per
                # call): start it, wait while writing is paused (backpressure), await it.
                if kwargs:
                    args = spec.bind(args, kwargs)
                future = connection.call_future_args(spec, args)
                call_id = connection.started_id
                if connection.writing_paused:
                    await connection.wait_writable()
                try:
                    return await future
                except asyncio.CancelledError:
                    connection.abandon(call_id)
                    raise
            if kind == "pipe":
                return await connection.pipe(spec, *args, **kwargs)
            if kind == "state":
                return await connection.state(spec, *args, **kwargs)
            if kind == "one_way":
                return await connection.one_way(spec, *args, **kwargs)
            return await connection.reverse_pipe(spec, *args, **kwargs)
        except ConnectionClosed as error:
            raise await self._translate(error, spec.name) from None

    def _submit(self, function: Rpc[Any, ..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Start an ``rpc`` call now and return a future of its result.

        The fast path for many calls in flight: ``await asyncio.gather(*(w.submit(f, x) for x
        in xs))`` creates no task per call, where ``run`` needs one each. Errors are the same
        as ``run``'s. Cancelling the future does not cancel the call on the worker.
        """
        connection = self._ready
        try:
            spec = function._rpc_spec  # (None for other kinds, and until its spec is made.)
        except AttributeError:
            spec = None
        if connection is None or spec is None or kwargs:
            return self._submit_other(function, args, kwargs)
        if not (connection.thread == get_ident() and connection.pid == _pid
                and connection.loop.is_running()) and not _in_own_loop(connection):
            raise self._other_loop(connection.loop)  # (_on_own_loop, inline: per call.)
        try:
            return connection.call_future_args(spec, args)
        except ConnectionClosed as error:
            return asyncio.ensure_future(self._raise_translated(error, spec.name))

    def _submit_other(
        self, function: Rpc[Any, ..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """``submit`` without its one-look-up path: no connection ready yet, keyword
        arguments, a function whose spec is not made yet, or not an ``rpc``."""
        connection = self._ready
        if connection is not None and not _on_own_loop(connection):
            raise self._other_loop(connection.loop)
        if connection is None or function.kind != "rpc":
            return asyncio.ensure_future(self._run(function, *args, **kwargs))
        spec = function._spec or function.spec
        try:
            if kwargs:
                args = spec.bind(args, kwargs)
            return connection.call_future_args(spec, args)
        except ConnectionClosed as error:
            return asyncio.ensure_future(self._raise_translated(error, spec.name))

    def _other_loop(self, loop: asyncio.AbstractEventLoop) -> Error:
        """The error for a handle used from an event loop other than its connection's."""
        return Error(
            f"worker {self.name}: this handle belongs to the event loop it was made in "
            f"({describe_loop(loop)}) and was used from another one "
            f"({describe_loop(asyncio.get_running_loop())}). A handle works only in its own "
            f"loop: spawn and use workers in one asyncio.run (or rp.start_app), or use "
            f"rp.blocking from code that is not async."
        )

    async def _raise_translated(self, error: ConnectionClosed, function: str) -> Any:
        raise await self._translate(error, function)



class WorkerHandle(_Runner[W_co]):
    """A running worker: run its functions, connect to it, close or shut it down.

    Can be passed to other workers as an argument; they ``connect`` to it.
    """

    if TYPE_CHECKING:
        async def run(
            self, function: Runnable[W_co, P, T], /, *args: P.args, **kwargs: P.kwargs
        ) -> T:
            """Run ``function`` on the worker: ``R`` for an rpc, a ``PipeReader`` for a pipe,
            ``(state, PipeReader)`` for a state function, None for a one-way function."""
            ...

        def submit(
            self, function: Rpc[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
        ) -> asyncio.Future[R]:
            """Start an ``rpc`` call now and return a future of its result."""
            ...
    else:
        run = _public_method(_Runner._run, "WorkerHandle", "run")
        submit = _public_method(_Runner._submit, "WorkerHandle", "submit")

    def __init__(
        self,
        *,
        worker_id: str,
        name: str,
        pid: int,
        host: str,
        address: str,
        worker_class: str,
        link: RpcConnection | None = None,
        supervisor: Supervisor | None = None,
        shutdown_on: ShutdownOn = "connection_closed",
    ) -> None:
        self.id = worker_id
        self.name = name
        self.pid = pid
        self.host = host
        self.address = address
        self.worker_class = worker_class
        self.shutdown_on: ShutdownOn = shutdown_on
        self._link = link  # Its lost-connection errors come from the master (``_death``).
        self._supervisor = supervisor  # A spawned worker's; None for served or received ones.
        self._own_connection: RpcConnection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self._ready = link

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.name} pid={self.pid} host={self.host} id={self.id}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ----- connections

    def _set_closed(self) -> None:
        """The handle is closed: no call starts on it any more."""
        self._closed = True
        self._ready = None

    async def _rpc_connection(self) -> RpcConnection:
        if self._closed:
            raise ConnectionClosed(f"worker {self.name}: this handle is closed")
        if self._link is not None:
            return self._link
        connection = self._own_connection
        if connection is None or connection.is_closed:
            async with self._connecting:
                connection = self._own_connection
                if connection is None or connection.is_closed:
                    connection = self._own_connection = await self._open(self._translate_own)
        return connection

    async def _open(self, translate_closed: TranslateClosed) -> RpcConnection:
        try:
            return await open_connection(self.address, translate_closed)
        except (OSError, HandshakeError) as error:
            raise await self._translate(
                ConnectionClosed(f"cannot connect to worker {self.name} at {self.address}: {error}"),
                "connect",
            ) from None

    async def _translate_own(
        self, connection: RpcConnection, error: ConnectionClosed
    ) -> Callable[[str], BaseException]:
        """Errors for calls on the handle's own connection, once it is lost."""
        return await self._death(error)

    async def _translate_connected(
        self, connection: RpcConnection, error: ConnectionClosed
    ) -> Callable[[str], BaseException]:
        """Errors for calls on a ``connect()`` connection, once it is lost: closed by its
        owner (``Connection.close``) is not a death."""
        if error.kind == "closed_here":
            return lambda function: error
        return await self._death(error)

    async def connect(self, arg: object = None) -> Connection[W_co]:
        """A new connection to the worker, with connection state from
        ``init_connection_state(arg)``."""
        if self._closed:
            raise ConnectionClosed(f"worker {self.name}: this handle is closed")
        connection = await self._open(self._translate_connected)
        try:
            await connection.call(INIT_CONNECTION, arg)
        except BaseException:
            connection.close("connection state could not be set up")
            raise
        return Connection(self, connection)

    async def subscribe_logs(self) -> PipeReader[LogRecord]:
        """Stream the worker's ``logging`` records from now on."""
        connection = await self._rpc_connection()
        try:
            _, reader = await connection.state(SUBSCRIBE_LOGS)
        except ConnectionClosed as error:
            raise await self._translate(error, SUBSCRIBE_LOGS.name) from None
        return reader

    async def close_server(self) -> None:
        """Stop the worker accepting new connections; existing ones go on."""
        connection = await self._rpc_connection()
        try:
            await connection.call(CLOSE_SERVER)
        except ConnectionClosed as error:
            raise await self._translate(error, CLOSE_SERVER.name) from None

    # ----- ending

    async def close(self) -> None:
        """Close this handle. With ``shutdown_on="connection_closed"`` the worker exits
        (this waits for it); in the other modes it goes on running."""
        if self._closed:
            return
        self._set_closed()
        if self._own_connection is not None:
            self._own_connection.close("handle closed")
        if self._link is not None and self.shutdown_on == "connection_closed":
            self._expect_exit()
            self._link.close("the master closed the worker's handle")
            await self._wait_exit()

    async def shutdown(self) -> None:
        """End the worker process, whatever its ``shutdown_on`` mode; waits for its exit."""
        self._expect_exit()
        supervisor = self._supervisor
        if self._link is None and supervisor is None:
            connection = await self._rpc_connection()
            await connection.call(SHUTDOWN)
            self._set_closed()
            return
        if self._link is not None and not self._link.is_closed:
            with contextlib.suppress(ConnectionClosed):
                await self._link.call(SHUTDOWN)
        elif (
            supervisor is not None and supervisor.detached
            and supervisor.process.returncode is None
        ):
            # The master's links have ended (called_shutdown): ask the worker directly.
            try:
                connection = await open_connection(self.address)
                try:
                    await connection.call(SHUTDOWN)
                finally:
                    connection.close("shutdown sent")
            except (ConnectionClosed, OSError, HandshakeError):
                pass
        self._set_closed()
        await self._wait_exit()

    def _expect_exit(self) -> None:
        if self._supervisor is not None:
            self._supervisor.expected_exit = True

    async def _wait_exit(self) -> None:
        if self._supervisor is not None:
            await self._supervisor.wait_exit()

    # ----- what the master knows of a handle (``_master.Supervised``)

    async def _master_exiting(self) -> None:
        supervisor = self._supervisor
        if self.shutdown_on != "called_shutdown" and self._link is not None:
            self._expect_exit()
            self._set_closed()
            self._link.close("the master is exiting")
        elif self.shutdown_on == "called_shutdown" and supervisor is not None:
            supervisor.detach()  # It outlives the master; ``shutdown()`` still ends it.

    def _failure_reported(self, report: ErrorInfo) -> None:
        if self._supervisor is not None:
            self._supervisor.failure_reported(report)

    async def _death(self, error: ConnectionClosed) -> Callable[[str], BaseException]:
        """What calls fail with once the connection to the worker is lost."""
        if self._supervisor is not None:
            return await self._supervisor.death(error, self._closed)
        if self._closed:
            return lambda function: error
        return lambda function: WorkerDied(
            f"worker {self.name}: {error.reason} (while running {function})",
            worker=self.name, function=function,
        )


class Connection(_Runner[W_co]):
    """An extra connection to a worker, with its own connection state."""

    if TYPE_CHECKING:
        async def run(
            self, function: Runnable[W_co, P, T], /, *args: P.args, **kwargs: P.kwargs
        ) -> T:
            """Run ``function`` on the worker: ``R`` for an rpc, a ``PipeReader`` for a pipe,
            ``(state, PipeReader)`` for a state function, None for a one-way function."""
            ...

        def submit(
            self, function: Rpc[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
        ) -> asyncio.Future[R]:
            """Start an ``rpc`` call now and return a future of its result."""
            ...
    else:
        run = _public_method(_Runner._run, "Connection", "run")
        submit = _public_method(_Runner._submit, "Connection", "submit")

    def __init__(self, handle: WorkerHandle[W_co], connection: RpcConnection) -> None:
        self.handle = handle
        self.name = handle.name
        self._connection = connection  # Opened with the handle's ``_translate_connected``.
        self._ready = connection

    def __repr__(self) -> str:
        return f"<rpc_parallel Connection to {self.handle.name}>"

    async def _rpc_connection(self) -> RpcConnection:
        return self._connection


    async def _death(self, error: ConnectionClosed) -> Callable[[str], BaseException]:
        if self._connection.close_kind == "closed_here":
            return lambda function: error
        return await self.handle._death(error)

    async def close(self) -> None:
        self._connection.close("connection closed by its owner")
        await self._connection.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def open_connection(
    address: str, translate_closed: TranslateClosed | None = None
) -> RpcConnection:
    """Connect to a worker server at ``address``: the first of its alternatives
    (``unix:/path tls:host:port``) that can be reached from here."""
    candidates = alternatives(address)
    if not candidates:
        raise ConnectionRefusedError(f"none of the addresses {address!r} can be used here")
    state = process()
    for candidate in candidates[:-1]:
        with contextlib.suppress(OSError):
            return await connect(
                candidate, secret=state.secret, identity=state.identity,
                settings=state.rpc_settings(), translate_closed=translate_closed,
            )
    return await connect(
        candidates[-1], secret=state.secret, identity=state.identity,
        settings=state.rpc_settings(), translate_closed=translate_closed,
    )


def _handle_to_wire(handle: WorkerHandle[Any]) -> list[Any]:
    return [handle.id, handle.name, handle.pid, handle.host, handle.address, handle.worker_class]


def _handle_from_wire(value: Any) -> WorkerHandle[Any]:
    try:
        worker_id, name, pid, host, address, worker_class = value
        return WorkerHandle(worker_id=str(worker_id), name=str(name), pid=int(pid), host=str(host),
                            address=str(address), worker_class=str(worker_class))
    except (TypeError, ValueError):
        raise ValueError(f"not a worker handle: {value!r}") from None


register_type(WorkerHandle, _handle_to_wire, _handle_from_wire)
