"""The spawn pipeline: from a worker class, an init argument and ``SpawnOptions`` to a
registered, supervised worker and its handle.

Steps: check the request (``_Prepared``), take a warm process (a fork of the fork server)
or launch one through the ``Launcher`` (``_start_process``), send its configuration, wait
for it to register with the master (``_await_registration``), check what it serves, make its
handle. On any failure
the process is killed and reaped. Imports the handle, the supervisor, the master and the
launch seam; knows worker classes only by the ``WorkerClass`` protocol.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import sys
import time
import uuid
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn, Protocol

import msgspec

from ._builtins import CONFIG_ENCODER, SHUTDOWN_MODES, Registration, ShutdownOn, WorkerConfig
from ._functions import Function
from ._handle import WorkerHandle
from ._master import Master, current_master
from ._prestart import ClassKey, WarmRequest, supported
from ._state import State, process
from ._supervisor import OnFailure, Supervisor, describe_exit
from .errors import ProtocolError, SpawnError
from .launch import (
    Forward,
    LaunchedProcess,
    Launcher,
    LaunchRequest,
    Local,
    Redirection,
    check_launcher,
    worker_paths,
)
from .launch._launcher import end_explanation
from .launch.redirection import to_wire
from .rpc import Connection as RpcConnection
from .rpc.functions import ENCODER, make_decoder, type_name


class _WorkerInstance(Protocol):
    """What the spawn needs of an ``rp.Worker`` (its class is a ``WorkerClass``)."""

    _rpc_parallel_functions: ClassVar[dict[str, Function[Any]]]

    @classmethod
    def init_type(cls) -> Any: ...


WorkerClass = type[_WorkerInstance]
"""A worker class (an ``rp.Worker`` subclass), as the spawn knows it."""


@dataclass(frozen=True, kw_only=True)
class SpawnOptions:
    """The keyword arguments of ``Worker.spawn`` / ``spawn_in_foreground``, as one value."""

    how: Launcher = Local()  # noqa: RUF009 - frozen, so one shared default is fine.
    name: str | None = None
    env: Mapping[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None
    umask: int | None = None
    shutdown_on: ShutdownOn = "connection_closed"
    redirect_stdout: Redirection = Forward()  # noqa: RUF009
    redirect_stderr: Redirection = Forward()  # noqa: RUF009
    on_failure: OnFailure | None = None
    connection_timeout: float = 10.0
    """Bounds the start: until the process has started, imported and connected back."""
    init_timeout: float | None = None
    """Bounds ``init_worker_state`` (none by default: heavy loading belongs there)."""
    foreground: bool = False
    """``spawn_in_foreground``: the caller's process group, no warm process."""


async def spawn(
    cls: WorkerClass, init_arg: Any, options: SpawnOptions
) -> tuple[WorkerHandle[Any], LaunchedProcess]:
    """Start one worker; returns once its ``init_worker_state`` has finished."""
    _refuse_unguarded_main()
    prepared = _Prepared(cls, init_arg, options)
    master = current_master()
    worker, name = await _start_process(prepared, master)
    loop = asyncio.get_running_loop()
    registered: asyncio.Future[tuple[RpcConnection, Registration]] = loop.create_future()
    initializing: asyncio.Future[RpcConnection] = loop.create_future()
    master.pending[prepared.worker_id] = registered
    master.initializing[prepared.worker_id] = initializing
    try:
        await worker.send(CONFIG_ENCODER.encode(await prepared.config(name, master)))
        link, registration = await _await_registration(
            worker, registered, initializing, name, options)
        link.check_menu(f.spec for f in cls._rpc_parallel_functions.values())
    except BaseException:
        await _abort(worker, registered)
        raise
    finally:
        master.pending.pop(prepared.worker_id, None)
        master.initializing.pop(prepared.worker_id, None)
    return _make_handle(prepared, name, link, registration, worker, master), worker


class UnguardedMainError(SpawnError):
    """A worker process, importing the main script, ran a spawn at the script's top level."""


def _refuse_unguarded_main() -> None:
    """Refuse a spawn made while this worker process imports the master's main script: the
    script starts workers at its top level (no main guard), so every worker would start
    another, without end. The error multiprocessing gives in the same case."""
    if not process().importing_for_worker:
        return
    main = sys.modules.get("__mp_main__")
    script = getattr(main, "__file__", None) or "the main script"
    raise UnguardedMainError(
        f"{script} starts workers when it is imported: a worker process imports the main "
        "script to find its worker class, and the script spawned a worker again.\n"
        "Start workers only when the script runs as the main program, under the main guard "
        "(as with multiprocessing):\n\n"
        "    if __name__ == '__main__':\n"
        "        rp.start_app(main)    # or asyncio.run(main())\n"
    )


class _Prepared:
    """A checked spawn request: the class's location, the encoded init argument."""

    def __init__(self, cls: WorkerClass, init_arg: Any, options: SpawnOptions) -> None:
        if options.shutdown_on not in SHUTDOWN_MODES:
            raise ValueError(
                f"shutdown_on must be one of {SHUTDOWN_MODES}, got {options.shutdown_on!r}"
            )
        check_launcher(options.how)
        _check_timeouts(options)
        self.cls = cls
        self.options = options
        for function in cls._rpc_parallel_functions.values():
            function.spec  # noqa: B018 — annotation errors surface here, not in the worker
        _check_constructor(cls)
        self.key: ClassKey = _class_location(cls)
        self.worker_id = str(uuid.uuid4())
        to_wire(options.redirect_stdout, "redirect_stdout")
        self.redirect_stderr = to_wire(options.redirect_stderr, "redirect_stderr")
        self.init_arg = _encode_init_arg(cls, init_arg)

    def default_name(self) -> str:
        return self.options.name or f"{self.cls.__name__}-{self.worker_id[:8]}"

    def may_use_warm(self) -> bool:
        """Whether a fork of the fork server can be this worker (decision 0021): a master
        under ``start_app``, the default local launch, and options a fork can honour. Not
        ``env`` (variables read at start-up or import would not apply), ``name`` (``ps``
        would not show it), ``called_shutdown`` (it dies with the fork server, which ends
        with the master), nor ``spawn_in_foreground`` (the caller's process group)."""
        options = self.options
        return (
            process().state is State.MASTER and supported()
            and not options.foreground and options.name is None and options.env is None
            and options.shutdown_on != "called_shutdown" and options.how.can_use_prestarted
        )

    async def config(self, name: str, master: Master) -> WorkerConfig:
        module, qualname, main_path = self.key
        how = self.options.how
        master_address = await master.address(remote=how.needs_network)
        sys_path, main_path = worker_paths(how, list(sys.path), main_path)
        return WorkerConfig(
            worker_id=self.worker_id, name=name, module=module, qualname=qualname,
            main_path=main_path, sys_path=sys_path, secret=process().secret,
            master_address=master_address, network=master.network(how, how.needs_network),
            settings=process().rpc_settings(), init_arg=self.init_arg,
            shutdown_on=self.options.shutdown_on, redirect_stderr=self.redirect_stderr,
            umask=self.options.umask, parent=f"{os.getpid()}@{socket.gethostname()}",
            argv=list(sys.argv),
        )


async def _start_process(prepared: _Prepared, master: Master) -> tuple[LaunchedProcess, str]:
    """A warm process (forked) when the spawn allows one, else a new one from the launcher."""
    options = prepared.options
    name = prepared.default_name()
    if prepared.may_use_warm():
        worker = await master.warm.take(WarmRequest(
            key=prepared.key, name=name,
            cwd=None if options.cwd is None else os.fspath(options.cwd),
            redirect_stdout=options.redirect_stdout, redirect_stderr=options.redirect_stderr,
            timeout=options.connection_timeout,
        ))
        if worker is not None:
            return worker, name
    command = options.how.worker_command(name)
    worker = await options.how.launch(LaunchRequest(
        name=name, command=command, env=options.env,
        cwd=None if options.cwd is None else os.fspath(options.cwd),
        redirect_stdout=options.redirect_stdout, redirect_stderr=options.redirect_stderr,
        new_session=not options.foreground,
    ))
    return worker, name


async def _await_registration(
    worker: LaunchedProcess,
    registered: asyncio.Future[tuple[RpcConnection, Registration]],
    initializing: asyncio.Future[RpcConnection],
    name: str,
    options: SpawnOptions,
) -> tuple[RpcConnection, Registration]:
    """Wait for the worker's two phases: start and connect back (``connection_timeout``),
    then ``init_worker_state`` (``init_timeout``). Fails if it exits or a phase runs out."""
    started = time.monotonic()
    await _wait_or_exit(worker, [registered, initializing], options.connection_timeout)
    if not (registered.done() or initializing.done()):
        await _not_registered(
            worker, name, started, "before it registered (while starting)",
            f"did not start and connect back within connection_timeout "
            f"({options.connection_timeout:g} s)")
    if not registered.done():
        await _await_init(worker, registered, initializing.result(), name, options)
    link, registration = registered.result()
    failure = registration.error
    if failure is not None:
        link.close("init_worker_state failed")
        await worker.stop(grace=5.0)
        raise SpawnError(
            f"worker {name}: {registration.failed_in} raised {failure.type_name}: "
            f"{failure.message}\n--- remote traceback ---\n{failure.traceback.rstrip()}",
            stderr_tail=worker.stderr_tail(),
        )
    return link, registration


async def _await_init(
    worker: LaunchedProcess,
    registered: asyncio.Future[tuple[RpcConnection, Registration]],
    initializing: RpcConnection,
    name: str,
    options: SpawnOptions,
) -> None:
    """The ``init_worker_state`` phase: until the registration, within ``init_timeout``.
    The connection the worker holds open meanwhile has heartbeats: if it is lost first, the
    worker stopped answering (or died) during initialisation."""
    started = time.monotonic()
    lost = asyncio.ensure_future(initializing.wait_closed())
    try:
        await _wait_or_exit(worker, [registered, lost], options.init_timeout)
        if lost.done() and not registered.done():
            await _wait_or_exit(worker, [registered], 1.0)  # dying, or registered meanwhile
    finally:
        lost.cancel()
    if registered.done():
        return
    during = "during init_worker_state"
    if lost.done() and worker.returncode is None:
        await _not_registered(worker, name, started, during,
                              f"stopped answering during init_worker_state "
                              f"({initializing.close_reason or 'connection lost'})")
    await _not_registered(
        worker, name, started, during,
        f"init_worker_state did not finish within init_timeout ({options.init_timeout} s)")


async def _wait_or_exit(
    worker: LaunchedProcess, futures: list[asyncio.Future[Any]], timeout: float | None
) -> None:
    """Until one of ``futures`` is done, the process exits, or ``timeout`` runs out."""
    exited = asyncio.ensure_future(worker.wait())
    try:
        await asyncio.wait([*futures, exited], timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()


async def _not_registered(
    worker: LaunchedProcess, name: str, since: float, during: str, timed_out: str
) -> NoReturn:
    """The ``SpawnError`` of a phase that did not end: the process exited, or ran out of
    time (then it is killed). Says which phase, and how long it ran."""
    took = time.monotonic() - since
    who = f"worker {name}{getattr(worker, 'where', '')}"  # " on host h (over ssh)"
    if worker.returncode is not None:
        await worker.drain_output(timeout=1.0)
        tail = worker.stderr_tail()
        raise SpawnError(f"{who} {describe_exit(worker.returncode)} {during}, "
                         f"after {took:.1f} s{end_explanation(worker)}{_last_line(tail)}",
                         stderr_tail=tail)
    await worker.kill_and_reap()
    tail = worker.stderr_tail()
    raise SpawnError(f"{who} {timed_out}: it ran {took:.1f} s; killed{_last_line(tail)}",
                     stderr_tail=tail)


def _last_line(tail: str) -> str:
    """``": <the last line of stderr>"``, the likeliest cause (ssh's own error, ...)."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return f": {lines[-1][:300]}" if lines else ""


def _check_timeouts(options: SpawnOptions) -> None:
    if not options.connection_timeout > 0:
        raise ValueError(f"connection_timeout must be positive, got {options.connection_timeout!r}")
    if options.init_timeout is not None and not options.init_timeout > 0:
        raise ValueError(f"init_timeout must be positive or None, got {options.init_timeout!r}")


_CONSTRUCTIBLE: weakref.WeakSet[type] = weakref.WeakSet()
"""Classes whose constructor takes no arguments (checked once: ``inspect.signature`` of a
class costs a third of a millisecond, as much as the rest of a spawn's checks)."""


def _check_constructor(cls: WorkerClass) -> None:
    """A worker is constructed with no arguments; a Ray-style ``__init__(self, arg)`` gets
    a hint to take the argument in ``init_worker_state``."""
    if cls in _CONSTRUCTIBLE:
        return
    try:
        inspect.signature(cls).bind()
    except TypeError:
        raise TypeError(
            f"{cls.__qualname__}.__init__{inspect.signature(cls)} takes arguments, but a worker "
            "is constructed with none. Take the spawn's argument in init_worker_state "
            "instead (it runs once in the worker):\n"
            f"    class {cls.__qualname__}(rp.Worker[T]):\n"
            "        async def init_worker_state(self, arg: T) -> None: ...\n"
            f"    await {cls.__qualname__}.spawn(arg)"
        ) from None
    except ValueError:
        pass  # No signature to check.
    _CONSTRUCTIBLE.add(cls)


async def _abort(
    worker: LaunchedProcess, registered: asyncio.Future[tuple[RpcConnection, Registration]]
) -> None:
    """The spawn failed or was cancelled: nothing it started is left running."""
    if worker.returncode is None:
        await asyncio.shield(worker.kill_and_reap())
    else:
        worker.close_pipes()
    if registered.done() and not registered.cancelled():
        registered.result()[0].close("spawn failed")


def _make_handle(
    prepared: _Prepared,
    name: str,
    link: RpcConnection,
    registration: Registration,
    worker: LaunchedProcess,
    master: Master,
) -> WorkerHandle[Any]:
    module, qualname, _ = prepared.key
    supervisor = Supervisor(
        name=name, pid=registration.pid, address=registration.address, link=link,
        worker_process=worker, on_failure=prepared.options.on_failure,
        outlives_master=prepared.options.shutdown_on == "called_shutdown",
    )
    handle: WorkerHandle[Any] = WorkerHandle(
        worker_id=prepared.worker_id, name=name, pid=registration.pid, host=registration.host,
        address=registration.address, worker_class=f"{module}.{qualname}", link=link,
        supervisor=supervisor, shutdown_on=prepared.options.shutdown_on,
    )
    master.handles[link] = handle
    link.user_data = handle  # For the master's translation of a lost link (``_death``).
    supervisor.start()
    return handle


def _class_location(cls: WorkerClass) -> ClassKey:
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
        if main_path == "<stdin>":
            raise SpawnError(
                f"worker class {qualname} is defined in a script read from standard input "
                "(python -): a worker process imports its class from a file. Save the "
                "script to a file and run python script.py, or define the class in a module"
            )
        if main_path is None:
            raise SpawnError(
                f"worker class {qualname} is defined in an interactive __main__; define it in "
                "an importable module"
            )
        main_path = os.path.abspath(main_path)
    return module, qualname, main_path


def _encode_init_arg(cls: WorkerClass, init_arg: Any) -> bytes:
    init_type = cls.init_type()
    try:
        encoded = ENCODER.encode(init_arg)
        make_decoder(init_type).decode(encoded)
    except (TypeError, msgspec.ValidationError) as error:
        raise ProtocolError(
            f"{cls.__qualname__}.spawn: init argument: {error} (expected {type_name(init_type)})"
        ) from None
    return encoded
