"""``rp.Worker``: the base class of worker types, their function table and hooks.

Imports the handle (``spawn`` returns one) and the built-ins a worker serves; the spawn
pipeline (``_spawn``, with the master's server and supervision) when ``spawn`` is first
called, as a worker process, which imports this module, rarely spawns. Nothing below imports
this module except the worker process's entry point.
"""

from __future__ import annotations

import asyncio
import os
import socket
import typing
import uuid
from collections.abc import Awaitable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

from ._builtins import ShutdownOn
from ._functions import THREADS_ATTRIBUTE, Function
from ._handle import WorkerHandle
from ._serving import builtin_implementations, kept_servers, report_fatal
from ._sockets import serve_in_temporary_directory
from ._state import process
from ._threads import WorkerThreads
from .errors import SpawnError
from .launch import Forward, Launcher, Local, Redirection
from .launch._process import WorkerProcess
from .rpc import Implementation, Server, current_connection
from .rpc.functions import check_declared_types
from .rpc.transport import address_of

if TYPE_CHECKING:
    from ._supervisor import OnFailure

I = TypeVar("I")  # noqa: E741


class Worker(Generic[I]):
    """Base class of worker types; ``I`` is the type of the spawn init argument.

    Subclasses declare functions with ``@rp.rpc``, ``@rp.pipe``, ``@rp.state``,
    ``@rp.one_way`` and ``@rp.reverse_pipe``; ``init_worker_state`` runs once in the
    worker before the spawn returns.
    """

    _rpc_parallel_functions: ClassVar[dict[str, Function[Any]]] = {}
    _rpc_parallel_server: Server | None = None

    max_thread_concurrency: ClassVar[int] = 1
    """How many calls of this worker's plain-``def`` functions may run at once (each in a
    thread, all sharing ``self``). One at a time by default, as Ray's actors; set it higher
    in the class body for functions that are safe to overlap (docs/decisions/0019).
    ``async def`` functions run on the event loop and are not counted."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        limit = cls.max_thread_concurrency
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise TypeError(
                f"{cls.__qualname__}.max_thread_concurrency must be a positive int, got {limit!r}"
            )
        functions: dict[str, Function[Any]] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                if isinstance(value, Function):
                    functions[attribute] = value
        cls._rpc_parallel_functions = functions
        for value in vars(cls).values():  # inherited functions: checked with their class
            if isinstance(value, Function):
                # A type that cannot travel fails the class statement; other annotation
                # mistakes (a name defined later, say) are found at spawn.
                check_declared_types(value.implementation, skip_first=True)

    def init_worker_state(self, init_arg: I, /) -> Awaitable[None] | None:
        """Runs once in the worker process with the spawn's init argument, before the
        spawn returns. Define it ``async def`` or plain ``def`` (which runs on the worker's
        event loop thread: nothing else runs yet, so blocking there is fine)."""
        return None

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
        """What a worker serves: its functions and the built-ins. Its plain-``def``
        functions share the worker's threads (``max_thread_concurrency`` of them)."""
        threads = WorkerThreads(cls.max_thread_concurrency, f"{cls.__qualname__}-thread")
        setattr(instance, THREADS_ATTRIBUTE, threads)  # For ``self.f(...)`` of a plain def.
        served = [
            Implementation(f.spec, f.bound_to(instance), threads)
            for f in cls._rpc_parallel_functions.values()
        ]
        return served + builtin_implementations(instance)

    @classmethod
    async def spawn(
        cls,
        init_arg: I,
        *,
        how: Launcher = Local(),  # noqa: B008
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        umask: int | None = None,
        shutdown_on: ShutdownOn = "connection_closed",
        redirect_stdout: Redirection = Forward(),  # noqa: B008
        redirect_stderr: Redirection = Forward(),  # noqa: B008
        on_failure: OnFailure | None = None,
        connection_timeout: float = 10.0,
        init_timeout: float | None = None,
    ) -> WorkerHandle[Self]:
        """Start one worker process; returns once its ``init_worker_state`` has finished."""
        from ._spawn import SpawnOptions, spawn

        handle, _ = await spawn(cls, init_arg, SpawnOptions(
            how=how, name=name, env=env, cwd=cwd, umask=umask, shutdown_on=shutdown_on,
            redirect_stdout=redirect_stdout, redirect_stderr=redirect_stderr,
            on_failure=on_failure, connection_timeout=connection_timeout,
            init_timeout=init_timeout,
        ))
        return handle

    @classmethod
    async def spawn_in_foreground(
        cls,
        init_arg: I,
        *,
        how: Launcher = Local(),  # noqa: B008
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        umask: int | None = None,
        shutdown_on: ShutdownOn = "connection_closed",
        redirect_stdout: Redirection = Forward(),  # noqa: B008
        redirect_stderr: Redirection = Forward(),  # noqa: B008
        on_failure: OnFailure | None = None,
        connection_timeout: float = 10.0,
        init_timeout: float | None = None,
    ) -> tuple[WorkerHandle[Self], WorkerProcess]:
        """Like ``spawn``, in the caller's process group, also giving the process itself
        (``pid``, ``await process.wait()`` for its exit status)."""
        from ._spawn import SpawnOptions, spawn

        handle, worker_process = await spawn(cls, init_arg, SpawnOptions(
            how=how, name=name, env=env, cwd=cwd, umask=umask, shutdown_on=shutdown_on,
            redirect_stdout=redirect_stdout, redirect_stderr=redirect_stderr,
            on_failure=on_failure, connection_timeout=connection_timeout,
            init_timeout=init_timeout, foreground=True,
        ))
        if not isinstance(worker_process, WorkerProcess):
            await handle.shutdown()
            raise SpawnError(f"spawn_in_foreground needs a launcher that starts a local "
                             f"process; {how!r} does not")
        return handle, worker_process

    @classmethod
    async def serve(cls, init_arg: I, *, name: str | None = None) -> WorkerHandle[Self]:
        """Run this worker's server inside the current process (several may run at once)."""
        instance = cls()
        initialized = instance.init_worker_state(init_arg)
        if initialized is not None:
            await initialized
        server = await serve_in_temporary_directory(
            "rpc_parallel-serve-", "worker.sock",
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
            address=address_of(server).wire,
            worker_class=f"{cls.__module__}.{cls.__qualname__}",
        )
