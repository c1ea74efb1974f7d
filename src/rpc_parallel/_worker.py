"""Worker classes, handles to running workers, and connections to them."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import inspect
import logging
import os
import shutil
import socket
import sys
import tempfile
import typing
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar, Generic, ParamSpec, Self, TypeVar, overload

import msgspec

from ._builtins import (
    CLOSE_SERVER,
    INIT_CONNECTION,
    SHUTDOWN,
    SUBSCRIBE_LOGS,
    ErrorReport,
    LogRecord,
    Redirect,
    WorkerConfig,
)
from ._functions import Function, OneWay, Pipe, ReversePipe, Rpc, StateFunction
from ._master import current_master
from ._serving import builtin_implementations, kept_servers, report_fatal
from ._state import State, process
from .errors import ConnectionClosed, ProtocolError, SpawnError, WorkerDied, WorkerFailure
from .launch import _process as spawn_process
from .launch.options import (
    SHUTDOWN_MODES,
    DevNull,
    FileAppend,
    FileTruncate,
    Forward,
    Local,
    Redirection,
    Remote,
    ShutdownOn,
    Wrap,
)
from .rpc import Connection as RpcConnection
from .rpc import (
    HandshakeError,
    Implementation,
    PipeReader,
    Server,
    connect_tcp,
    connect_unix,
    current_connection,
    serve_unix,
)
from .rpc.connection import TranslateClosed
from .rpc.functions import ENCODER, make_decoder, register_type, type_name

I = TypeVar("I")  # noqa: E741
W = TypeVar("W", bound="Worker[Any]")
# Handles and connections are covariant: a WorkerHandle[Derived] runs every function of Base
# (the functions are contravariant in their worker type), so it is a WorkerHandle[Base].
W_co = TypeVar("W_co", bound="Worker[Any]", covariant=True)
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")
U = TypeVar("U")

logger = logging.getLogger("rpc_parallel")

_CLOSED_BY_OWNER = "connection closed by its owner"

OnFailure = Callable[[WorkerFailure], object]


class Worker(Generic[I]):
    """Base class of worker types; ``I`` is the type of the spawn init argument.

    Subclasses declare functions with ``@rp.rpc``, ``@rp.pipe``, ``@rp.state``,
    ``@rp.one_way`` and ``@rp.reverse_pipe``; ``init_worker_state`` runs once in the
    worker before the spawn returns.
    """

    _rpc_parallel_functions: ClassVar[dict[str, Function[Any]]] = {}
    _rpc_parallel_server: Server | None = None
    _rpc_parallel_on_fatal: Callable[[ErrorReport], None] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        functions: dict[str, Function[Any]] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                if isinstance(value, Function):
                    functions[attribute] = value
        cls._rpc_parallel_functions = functions

    async def init_worker_state(self, init_arg: I, /) -> None:
        """Runs once in the worker process with the spawn's init argument."""

    async def init_connection_state(self, arg: Any, /) -> Any:
        """Runs for each ``handle.connect(arg)``; its result is ``self.connection_state``."""
        return arg

    @property
    def connection_state(self) -> Any:
        """The state of the connection whose call is running (None on a handle's own)."""
        try:
            return current_connection.get().user_data
        except LookupError:
            return None

    def start_background(self, coroutine: Awaitable[Any], name: str | None = None) -> asyncio.Task[Any]:
        """Run work in the background of this worker. If it raises, the master's
        ``on_failure`` is told and the worker exits."""
        task = asyncio.ensure_future(coroutine)
        if name is not None:
            task.set_name(name)
        self._rpc_parallel_background().add(task)
        task.add_done_callback(self._background_done)
        return task

    def _rpc_parallel_background(self) -> set[asyncio.Task[Any]]:
        tasks: set[asyncio.Task[Any]] | None = self.__dict__.get("_rpc_parallel_tasks")
        if tasks is None:
            tasks = self.__dict__["_rpc_parallel_tasks"] = set()
        return tasks

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._rpc_parallel_background().discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            report_fatal(self, error, f"background task {task.get_name()} failed")

    # ------------------------------------------------------------------ class-level API

    @classmethod
    def functions(cls) -> list[Function[Any]]:
        return list(cls._rpc_parallel_functions.values())

    @classmethod
    def init_type(cls) -> Any:
        """The spawn init argument's type, from ``Worker[I]`` in the class's bases."""
        for klass in cls.__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                origin = typing.get_origin(base)
                if isinstance(origin, type) and issubclass(origin, Worker):
                    arguments = typing.get_args(base)
                    if arguments and not isinstance(arguments[0], TypeVar):
                        return arguments[0]
        return Any

    @classmethod
    def implementations(cls, instance: Worker[Any]) -> list[Implementation]:
        """What a worker serves: its functions and the built-ins."""
        served = [
            Implementation(f.spec, f.bound_to(instance))
            for f in cls._rpc_parallel_functions.values()
        ]
        return served + builtin_implementations(instance)

    @classmethod
    async def spawn(
        cls,
        init_arg: I,
        *,
        how: Local | Remote | Wrap = Local(),  # noqa: B008
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        umask: int | None = None,
        shutdown_on: ShutdownOn = "connection_closed",
        redirect_stdout: Redirection = Forward(),  # noqa: B008
        redirect_stderr: Redirection = Forward(),  # noqa: B008
        on_failure: OnFailure | None = None,
        connection_timeout: float = 10.0,
    ) -> WorkerHandle[Self]:
        """Start one worker process; returns once its ``init_worker_state`` has finished."""
        handle, _ = await _spawn(
            cls, init_arg, how=how, name=name, env=env, cwd=cwd, umask=umask,
            shutdown_on=shutdown_on, redirect_stdout=redirect_stdout,
            redirect_stderr=redirect_stderr, on_failure=on_failure,
            connection_timeout=connection_timeout, foreground=False,
        )
        return handle

    @classmethod
    async def spawn_in_foreground(
        cls,
        init_arg: I,
        *,
        how: Local | Remote | Wrap = Local(),  # noqa: B008
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        umask: int | None = None,
        shutdown_on: ShutdownOn = "connection_closed",
        redirect_stdout: Redirection = Forward(),  # noqa: B008
        redirect_stderr: Redirection = Forward(),  # noqa: B008
        on_failure: OnFailure | None = None,
        connection_timeout: float = 10.0,
    ) -> tuple[WorkerHandle[Self], spawn_process.WorkerProcess]:
        """Like ``spawn``, in the caller's process group, also giving the process itself
        (``pid``, ``await process.wait()`` for its exit status)."""
        handle, worker_process = await _spawn(
            cls, init_arg, how=how, name=name, env=env, cwd=cwd, umask=umask,
            shutdown_on=shutdown_on, redirect_stdout=redirect_stdout,
            redirect_stderr=redirect_stderr, on_failure=on_failure,
            connection_timeout=connection_timeout, foreground=True,
        )
        return handle, worker_process

    @classmethod
    async def serve(cls, init_arg: I, *, name: str | None = None) -> WorkerHandle[Self]:
        """Run this worker's server inside the current process (several may run at once)."""
        instance = cls()
        await instance.init_worker_state(init_arg)
        directory = tempfile.mkdtemp(prefix="rpc_parallel-serve-")
        atexit.register(shutil.rmtree, directory, True)
        server = await serve_unix(
            f"{directory}/worker.sock",
            secret=process().secret,
            implementations=cls.implementations(instance),
            settings=process().rpc_settings(),
        )
        instance._rpc_parallel_server = server
        kept_servers.add(server)  # the loop holds no reference to a listening server
        return WorkerHandle(
            worker_id=str(uuid.uuid4()),
            name=name or cls.__name__,
            pid=os.getpid(),
            host=socket.gethostname(),
            address=f"unix:{server.address}",
            worker_class=f"{cls.__module__}.{cls.__qualname__}",
        )


# ---------------------------------------------------------------------- handles


class _Runner(Generic[W_co]):
    """Running functions of a ``W`` worker: ``await x.run(W.f, *args, **kwargs)``."""

    name: str

    async def _rpc_connection(self) -> RpcConnection:
        raise NotImplementedError

    async def _translate(self, error: ConnectionClosed, function: str) -> BaseException:
        return error

    @overload
    async def run(
        self, function: Rpc[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    @overload
    async def run(
        self, function: Pipe[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> PipeReader[R]: ...
    @overload
    async def run(
        self, function: StateFunction[W_co, P, S, U], /, *args: P.args, **kwargs: P.kwargs
    ) -> tuple[S, PipeReader[U]]: ...
    @overload
    async def run(
        self, function: OneWay[W_co, P], /, *args: P.args, **kwargs: P.kwargs
    ) -> None: ...
    @overload
    async def run(
        self, function: ReversePipe[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...
    async def run(self, function: Function[Any], /, *args: Any, **kwargs: Any) -> Any:
        """Run ``function`` on the worker; the result's type follows the function's kind."""
        try:
            spec = function._spec or function.spec
        except AttributeError:
            raise TypeError(
                f"run() takes a worker function (declared with @rp.rpc, @rp.pipe, ...), "
                f"got {type(function).__qualname__}"
            ) from None
        connection = self._ready_connection() or await self._rpc_connection()
        try:
            kind = spec.kind
            if kind == "rpc":
                # The layer's own call: it waits while writing is paused (backpressure).
                return await connection.call(spec, *args, **kwargs)
            if kind == "pipe":
                return await connection.pipe(spec, *args, **kwargs)
            if kind == "state":
                return await connection.state(spec, *args, **kwargs)
            if kind == "one_way":
                return await connection.one_way(spec, *args, **kwargs)
            return await connection.reverse_pipe(spec, *args, **kwargs)
        except ConnectionClosed as error:
            raise await self._translate(error, spec.name) from None

    def submit(
        self, function: Rpc[W_co, P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[R]:
        """Start an ``rpc`` call now and return a future of its result.

        The fast path for many calls in flight: ``await asyncio.gather(*(w.submit(f, x) for x
        in xs))`` creates no task per call, where ``run`` needs one each. Errors are the same
        as ``run``'s. Cancelling the future does not cancel the call on the worker.
        """
        connection = self._ready_connection()
        if connection is None or function.kind != "rpc":
            return asyncio.ensure_future(self.run(function, *args, **kwargs))
        spec = function._spec or function.spec
        try:
            return connection.start_call(spec, spec.bind(args, kwargs))[0]
        except ConnectionClosed as error:
            return asyncio.ensure_future(self._raise_translated(error, spec.name))

    async def _raise_translated(self, error: ConnectionClosed, function: str) -> Any:
        raise await self._translate(error, function)

    def _ready_connection(self) -> RpcConnection | None:
        """The connection to use without waiting, if there is one."""
        return None


class WorkerHandle(_Runner[W_co]):
    """A running worker: run its functions, connect to it, close or shut it down.

    Can be passed to other workers as an argument; they ``connect`` to it.
    """

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
        worker_process: spawn_process.WorkerProcess | None = None,
        shutdown_on: ShutdownOn = "connection_closed",
        on_failure: OnFailure | None = None,
    ) -> None:
        self.id = worker_id
        self.name = name
        self.pid = pid
        self.host = host
        self.address = address
        self.worker_class = worker_class
        self.shutdown_on: ShutdownOn = shutdown_on
        self._link = link  # Its lost-connection errors come from the master (``_death``).
        self._process = worker_process
        self._on_failure = on_failure
        self._own_connection: RpcConnection | None = None
        self._connecting = asyncio.Lock()
        self._closed = False
        self._expected_exit = False
        self._failure: WorkerFailure | None = None
        self._returncode: int | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._detached = False

    def __repr__(self) -> str:
        return f"<WorkerHandle {self.name} pid={self.pid} host={self.host} id={self.id}>"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ----- connections

    def _ready_connection(self) -> RpcConnection | None:
        return self._link if not self._closed else None

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
                    connection = self._own_connection = await self._open()
        return connection

    async def _open(self) -> RpcConnection:
        try:
            return await open_connection(self.address, self._translate_own)
        except (OSError, HandshakeError) as error:
            raise await self._translate(
                ConnectionClosed(f"cannot connect to worker {self.name} at {self.address}: {error}"),
                "connect",
            ) from None

    async def _translate_own(
        self, connection: RpcConnection, error: ConnectionClosed
    ) -> Callable[[str], BaseException]:
        """Errors for calls on a connection this handle opened, once it is lost."""
        if error.reason == _CLOSED_BY_OWNER:
            return lambda function: error
        return await self._death(error)

    async def connect(self, arg: object = None) -> Connection[W_co]:
        """A new connection to the worker, with connection state from
        ``init_connection_state(arg)``."""
        if self._closed:
            raise ConnectionClosed(f"worker {self.name}: this handle is closed")
        connection = await self._open()
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
        self._closed = True
        if self._own_connection is not None:
            self._own_connection.close("handle closed")
        if self._link is not None and self.shutdown_on == "connection_closed":
            self._expected_exit = True
            self._link.close("the master closed the worker's handle")
            await self._wait_exit()

    async def shutdown(self) -> None:
        """End the worker process, whatever its ``shutdown_on`` mode; waits for its exit."""
        self._expected_exit = True
        if self._link is None and self._process is None:
            connection = await self._rpc_connection()
            await connection.call(SHUTDOWN)
            self._closed = True
            return
        if self._link is not None and not self._link.is_closed:
            with contextlib.suppress(ConnectionClosed):
                await self._link.call(SHUTDOWN)
        elif self._detached and self._process is not None and self._process.returncode is None:
            # The master's links have ended (called_shutdown): ask the worker directly.
            try:
                connection = await open_connection(self.address)
                try:
                    await connection.call(SHUTDOWN)
                finally:
                    connection.close("shutdown sent")
            except (ConnectionClosed, OSError, HandshakeError):
                pass
        self._closed = True
        await self._wait_exit()

    async def _wait_exit(self) -> None:
        if self._detached:
            if self._process is not None:
                self._returncode = await self._process.stop(grace=5.0)
        elif self._supervisor is not None:
            await asyncio.shield(self._supervisor)

    async def _master_exiting(self) -> None:
        if self.shutdown_on != "called_shutdown" and self._link is not None:
            self._expected_exit = True
            self._closed = True
            self._link.close("the master is exiting")
        elif self.shutdown_on == "called_shutdown" and self._supervisor is not None:
            # It outlives the master: stop supervising (closing the master's server ends its
            # link, which must not get it killed); ``shutdown()`` still ends it.
            self._detached = True
            self._supervisor.cancel()

    # ----- supervision (handles of spawned workers only)

    def _start_supervision(self) -> None:
        self._supervisor = asyncio.ensure_future(self._supervise())
        current_master().own(self._supervisor)

    async def _supervise(self) -> None:
        link, worker_process = self._link, self._process
        assert link is not None and worker_process is not None
        master = current_master()
        closed = asyncio.ensure_future(link.wait_closed())
        exited = asyncio.ensure_future(worker_process.process.wait())
        try:
            await asyncio.wait({closed, exited}, return_when=asyncio.FIRST_COMPLETED)
            if exited.done():
                if not closed.done():
                    # Read what it sent before dying (a failure report) up to the link's end
                    # of file, which its exit has caused; bounded in case a child holds it.
                    await asyncio.wait({closed}, timeout=1.0)
                link.close(f"worker process {spawn_process.describe_exit(exited.result())}")
                returncode = await worker_process.stop(grace=0)
            else:
                grace = 5.0 if self._expected_exit else 1.0
                returncode = await worker_process.stop(grace=grace)
            self._returncode = returncode
            _remove_socket_directory(self.address)
            if not self._expected_exit and self._failure is None:
                self._notify(WorkerFailure(
                    self.name,
                    f"{self._describe_end(returncode, link.close_reason)}",
                    exit_code=returncode if returncode >= 0 else None,
                    signal=-returncode if returncode < 0 else None,
                    stderr_tail=worker_process.stderr_tail(),
                ))
        finally:
            closed.cancel()
            master.handles.pop(link, None)

    def _describe_end(self, returncode: int, reason: str | None) -> str:
        text = f"worker {self.name} (pid {self.pid}) {spawn_process.describe_exit(returncode)}"
        if reason and "heartbeat timeout" in reason:
            text = f"worker {self.name} (pid {self.pid}) stopped answering ({reason}); killed"
        return text

    def _failure_reported(self, report: ErrorReport) -> None:
        self._failure = WorkerFailure(
            self.name, report.message, remote_type=report.type_name,
            remote_traceback=report.traceback,
        )
        self._notify(self._failure)

    def _notify(self, failure: WorkerFailure) -> None:
        if self._on_failure is None:
            logger.error("%s", failure)
            return
        try:
            result = self._on_failure(failure)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                current_master().own(task)
        except Exception:
            logger.exception("on_failure of worker %s raised", self.name)

    async def _translate(self, error: ConnectionClosed, function: str) -> BaseException:
        if isinstance(error, WorkerDied):
            return error
        return (await self._death(error))(function)

    async def _death(self, error: ConnectionClosed) -> Callable[[str], BaseException]:
        """What calls fail with once the connection to the worker is lost: ``WorkerDied``
        with its exit status and stderr tail (known once the process has been reaped)."""
        worker_process = self._process
        if worker_process is None:
            if self._closed:
                return lambda function: error
            return lambda function: WorkerDied(
                f"worker {self.name}: {error.reason} (while running {function})",
                worker=self.name, function=function,
            )
        if self._closed and self._expected_exit and self._returncode is None:
            closed = ConnectionClosed(f"worker {self.name}: this handle is closed")
            return lambda function: closed
        if self._supervisor is not None:
            await asyncio.wait({self._supervisor}, timeout=10.0)
        returncode = self._returncode
        if returncode is None:
            returncode = worker_process.returncode
        if returncode is None:
            text = f"worker {self.name} (pid {self.pid}) lost: {error.reason}"
        else:
            text = self._describe_end(returncode, error.reason)
        if self._failure is not None:
            text += f", after reporting: {self._failure.message}"
        tail = worker_process.stderr_tail()
        exit_code = returncode if returncode is not None and returncode >= 0 else None
        signal = -returncode if returncode is not None and returncode < 0 else None
        return lambda function: WorkerDied(
            f"{text} (while running {function})", worker=self.name, function=function,
            exit_code=exit_code, signal=signal, stderr_tail=tail,
        )


class Connection(_Runner[W_co]):
    """An extra connection to a worker, with its own connection state."""

    def __init__(self, handle: WorkerHandle[W_co], connection: RpcConnection) -> None:
        self.handle = handle
        self.name = handle.name
        self._connection = connection  # Opened by the handle, with its ``_translate_own``.

    def __repr__(self) -> str:
        return f"<rpc_parallel Connection to {self.handle.name}>"

    async def _rpc_connection(self) -> RpcConnection:
        return self._connection

    def _ready_connection(self) -> RpcConnection | None:
        return self._connection

    async def _translate(self, error: ConnectionClosed, function: str) -> BaseException:
        if isinstance(error, WorkerDied):
            return error
        return (await self._death(error))(function)

    async def _death(self, error: ConnectionClosed) -> Callable[[str], BaseException]:
        if self._connection.close_reason == _CLOSED_BY_OWNER:
            return lambda function: error
        return await self.handle._death(error)

    async def close(self) -> None:
        self._connection.close(_CLOSED_BY_OWNER)
        await self._connection.wait_closed()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


async def open_connection(
    address: str, translate_closed: TranslateClosed | None = None
) -> RpcConnection:
    """Connect to a worker server at ``unix:/path`` or ``tcp:host:port``."""
    settings = process().rpc_settings()
    secret = process().secret
    if address.startswith("unix:"):
        return await connect_unix(
            address[5:], secret=secret, settings=settings, translate_closed=translate_closed
        )
    if address.startswith("tcp:"):
        host, _, port = address[4:].rpartition(":")
        return await connect_tcp(
            host, int(port), secret=secret, settings=settings, translate_closed=translate_closed
        )
    raise ProtocolError(f"unknown worker address {address!r}")


def _remove_socket_directory(address: str) -> None:
    """A dead worker cannot remove its socket's directory; its master does."""
    directory = os.path.dirname(address.removeprefix("unix:"))
    if address.startswith("unix:") and os.path.basename(directory).startswith(
        "rpc_parallel-worker-"
    ):
        shutil.rmtree(directory, ignore_errors=True)


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


# ---------------------------------------------------------------------- spawning


def _redirect(value: Redirection, what: str) -> Redirect:
    if isinstance(value, Forward):
        return Redirect("forward")
    if isinstance(value, DevNull):
        return Redirect("devnull")
    if isinstance(value, FileAppend):
        return Redirect("append", os.path.abspath(os.fspath(value.path)))
    if isinstance(value, FileTruncate):
        return Redirect("truncate", os.path.abspath(os.fspath(value.path)))
    raise TypeError(f"{what} must be rp.Forward(), rp.DevNull(), rp.FileAppend(path) or "
                    f"rp.FileTruncate(path), got {value!r}")


def _class_location(cls: type) -> tuple[str, str, str | None]:
    module = cls.__module__
    qualname = cls.__qualname__
    if "<locals>" in qualname:
        raise SpawnError(
            f"worker class {qualname} is defined inside a function; define it at module top "
            "level so the worker process can import it"
        )
    main_path = None
    if module in ("__main__", "__mp_main__"):
        main_module = sys.modules.get(module)
        main_path = getattr(main_module, "__file__", None)
        if main_path is None:
            raise SpawnError(
                f"worker class {qualname} is defined in an interactive __main__; define it in "
                "an importable module"
            )
        main_path = os.path.abspath(main_path)
    return module, qualname, main_path


def _encode_init_arg(cls: type[Worker[Any]], init_arg: Any) -> bytes:
    init_type = cls.init_type()
    try:
        encoded = ENCODER.encode(init_arg)
        make_decoder(init_type).decode(encoded)
    except (TypeError, msgspec.ValidationError) as error:
        raise ProtocolError(
            f"{cls.__qualname__}.spawn: init argument: {error} (expected {type_name(init_type)})"
        ) from None
    return encoded


async def _spawn(
    cls: type[W],
    init_arg: Any,
    *,
    how: Local | Remote | Wrap,
    name: str | None,
    env: Mapping[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    umask: int | None,
    shutdown_on: ShutdownOn,
    redirect_stdout: Redirection,
    redirect_stderr: Redirection,
    on_failure: OnFailure | None,
    connection_timeout: float,
    foreground: bool,
) -> tuple[WorkerHandle[W], spawn_process.WorkerProcess]:
    if shutdown_on not in SHUTDOWN_MODES:
        raise ValueError(f"shutdown_on must be one of {SHUTDOWN_MODES}, got {shutdown_on!r}")
    if not isinstance(how, Local | Remote | Wrap):
        raise TypeError(f"how must be rp.Local(), rp.Remote(...) or rp.Wrap(...), got {how!r}")
    module, qualname, main_path = _class_location(cls)
    for function in cls._rpc_parallel_functions.values():
        function.spec  # noqa: B018 — annotation errors surface here, not in the worker
    worker_id = str(uuid.uuid4())
    _redirect(redirect_stdout, "redirect_stdout")
    master = current_master()
    warm_key = (module, qualname, main_path)
    prestart = (
        process().state is State.MASTER
        and os.environ.get("RPC_PARALLEL_PRESTART", "1") != "0"
        and not foreground and name is None and env is None and cwd is None
        and how == Local() and isinstance(redirect_stdout, Forward)
    )
    warm = await master.take_warm(warm_key) if prestart else None
    if prestart:
        master.warm_up(warm_key)  # Ready, or nearly, by the next spawn of this class.
    worker_name = warm.name if warm is not None else (name or f"{cls.__name__}-{worker_id[:8]}")
    config = WorkerConfig(
        worker_id=worker_id,
        name=worker_name,
        module=module,
        qualname=qualname,
        main_path=main_path,
        sys_path=list(sys.path),
        secret=process().secret,
        master_address=await master.address(),
        settings=process().rpc_settings(),
        init_arg=_encode_init_arg(cls, init_arg),
        shutdown_on=shutdown_on,
        redirect_stderr=_redirect(redirect_stderr, "redirect_stderr"),
        umask=umask,
        parent=f"{os.getpid()}@{socket.gethostname()}",
    )
    registered: asyncio.Future[tuple[RpcConnection, Any]] = asyncio.get_running_loop().create_future()
    master.pending[worker_id] = registered
    worker_process: spawn_process.WorkerProcess | None = None
    try:
        if warm is not None:
            worker_process = warm
            worker_process.redirect_stderr = redirect_stderr
            await spawn_process.send(worker_process, config)
        else:
            worker_process = await spawn_process.start(
                worker_name, how=how, env=env, cwd=None if cwd is None else os.fspath(cwd),
                redirect_stdout=redirect_stdout, redirect_stderr=redirect_stderr,
                new_session=not foreground,
            )
            await spawn_process.send(worker_process, config)
        exited: asyncio.Future[Any] = asyncio.ensure_future(worker_process.process.wait())
        try:
            await asyncio.wait([registered, exited], timeout=connection_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if not registered.done():
            if worker_process.returncode is not None:
                await worker_process.drain_output(timeout=1.0)
                raise SpawnError(
                    f"worker {worker_name} {spawn_process.describe_exit(worker_process.returncode)}"
                    " before it registered",
                    stderr_tail=worker_process.stderr_tail(),
                )
            await worker_process.kill_and_reap()
            raise SpawnError(
                f"worker {worker_name} did not register within connection_timeout "
                f"({connection_timeout:g} s); killed",
                stderr_tail=worker_process.stderr_tail(),
            )
        link, registration = registered.result()
        if registration.error is not None:
            failure = registration.error
            link.close("init_worker_state failed")
            await worker_process.stop(grace=5.0)
            raise SpawnError(
                f"worker {worker_name}: init_worker_state raised {failure.type_name}: "
                f"{failure.message}\n--- remote traceback ---\n{failure.traceback.rstrip()}",
                stderr_tail=worker_process.stderr_tail(),
            )
        link.check_menu(f.spec for f in cls._rpc_parallel_functions.values())
    except BaseException:
        if worker_process is not None and worker_process.returncode is None:
            await asyncio.shield(worker_process.kill_and_reap())
        elif worker_process is not None:
            worker_process.close_pipes()
        if registered.done() and not registered.cancelled():
            registered.result()[0].close("spawn failed")
        raise
    finally:
        master.pending.pop(worker_id, None)
    handle: WorkerHandle[W] = WorkerHandle(
        worker_id=worker_id,
        name=worker_name,
        pid=registration.pid,
        host=registration.host,
        address=registration.address,
        worker_class=f"{module}.{qualname}",
        link=link,
        worker_process=worker_process,
        shutdown_on=shutdown_on,
        on_failure=on_failure,
    )
    master.handles[link] = handle
    link.user_data = handle  # For the master's translation of a lost link (``_death``).
    handle._start_supervision()
    return handle, worker_process
