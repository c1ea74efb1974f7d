"""The worker side of a spawned process: read the configuration, serve, exit.

Started as ``python -m rpc_parallel worker <name> child-of <pid>@<host>``; the
configuration (including the application secret) arrives on stdin, never on the command
line. The process exits when its master link drops (the master died or closed the handle),
unless it was spawned with ``shutdown_on="called_shutdown"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn

from . import _start_up
from ._builtins import (
    CONFIG_DECODER,
    CONFIG_ENCODER,
    INITIALIZING,
    REGISTER,
    WORKER_FAILED,
    Registration,
    WorkerConfig,
)
from ._network import advertised_host, alternatives, join
from ._serving import report_fatal, set_exit_future, set_fatal_reporter
from ._sockets import (
    WORKER_PREFIX,
    remove_own_directories,
    remove_socket_directory,
    serve_in_temporary_directory,
)
from ._state import State, process
from ._worker_type import Worker
from .launch._launcher import CONFIG_FILE_VARIABLE
from .launch.redirection import Redirect
from .rpc import Connection as RpcConnection
from .rpc import Error as RpcError
from .rpc import (
    FunctionSpec,
    Implementation,
    RpcSettings,
    Server,
    _segments,
    new_event_loop,
    serve_tcp,
    server_context,
)
from .rpc import run as rpc_run
from .rpc.frames import ErrorInfo, remote_error_info, text_limit
from .rpc.functions import make_decoder
from .rpc.transport import Tcp, address_of, connect

_registered = threading.Event()


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            raise EOFError("the master closed stdin before sending the configuration")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_config(fd: int = 0) -> WorkerConfig:
    """The configuration: a 4-byte little-endian length, then its MessagePack encoding."""
    length = int.from_bytes(_read_exactly(fd, 4), "little")
    if length > 64 * 1024 * 1024:
        raise ValueError(f"worker configuration of {length} bytes is not plausible")
    config: WorkerConfig = CONFIG_DECODER.decode(_read_exactly(fd, length))
    return config


def read_config_file(path: str, timeout: float = 120.0) -> WorkerConfig:
    """The configuration from ``path``, once the master has written it (it writes it as
    soon as the job runs); the file is deleted at once. ``EOFError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise EOFError(f"no configuration appeared at {path} within {timeout:g} s") from None
            time.sleep(0.02)  # polling for the file, bounded by the deadline above
            continue
        try:
            os.unlink(path)
            return read_config(fd)
        finally:
            os.close(fd)


def _use_argv(argv: list[str]) -> None:
    """Take the master's ``sys.argv`` (as multiprocessing does): a main script that parses
    its arguments at top level sees the same ones when a worker imports it."""
    if argv:
        sys.argv[:] = argv


def _watch_stdin(shutdown_on: str) -> None:
    """The master holds our stdin open for our whole life: end of file means it is gone."""
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    if shutdown_on == "called_shutdown" and _registered.is_set():
        # Outlive the master; its ends of our output pipes are gone, so write nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        with contextlib.suppress(OSError):
            if os.fstat(2).st_mode & 0o170000 == 0o010000:  # stderr is still the pipe
                os.dup2(devnull, 2)
        os.close(devnull)
        return
    remove_own_directories()  # (os._exit skips atexit; no master is left to do it)
    _segments.sweep_all()  # shared memory of its connections (decision 0022)
    sys.stderr.flush()
    os._exit(0)


def _import_module(name: str, main_path: str | None) -> Any:
    """The module ``name``, or the master's main script (``main_path``) as ``__mp_main__``,
    run once per process: a forked worker finds the template's."""
    if main_path is None:
        return importlib.import_module(name)
    loaded = sys.modules.get("__mp_main__")
    if loaded is not None and getattr(loaded, "__file__", None) == main_path:
        return loaded
    process().importing_for_worker = True
    spec = importlib.util.spec_from_file_location("__mp_main__", main_path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the main script {main_path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__mp_main__"] = module
    spec.loader.exec_module(module)
    # Both names, after the script ran: a script that imports multiprocessing for the first
    # time has just pointed ``__mp_main__`` back at ``__main__`` (multiprocessing does that
    # when it is imported), and each forked worker ran the script again.
    sys.modules["__main__"] = sys.modules["__mp_main__"] = module
    process().importing_for_worker = False
    return module


def preload(module: str, main_path: str | None) -> None:
    """Import a worker class's module in a fork server's template, ahead of its forks (and
    uvloop, which every worker's loop uses). A module that fails to import leaves nothing
    half-imported behind: the forked child imports it again and reports the failure
    exactly as an exec'd worker does."""
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401
    main_module = sys.modules.get("__main__")
    try:
        imported = _import_module(module, main_path)
    except BaseException:
        process().importing_for_worker = False
        if main_path is not None:
            sys.modules.pop("__mp_main__", None)
            if main_module is not None:
                sys.modules["__main__"] = main_module
        return
    for value in list(vars(imported).values()):  # the specs, made once for every fork
        if isinstance(value, type) and issubclass(value, Worker):
            with contextlib.suppress(Exception):
                for function in value._rpc_parallel_functions.values():
                    function.spec  # noqa: B018
                    function._keyword_layout()


_REHEARSED = FunctionSpec("rpc_parallel.rehearsal", kind="rpc", parameters=[("x", int)],
                          response=int)


REHEARSALS = 10
"""How many times ``rehearse`` runs a worker's start: enough for the interpreter to have
specialised the code on its path (a function is quickened after 8 calls), which children
would otherwise do, writing to shared pages. About 1 ms each after the first."""


def rehearse() -> None:
    """Run in a fork server's template, before its first fork, what every forked worker
    runs first: decode a configuration, make an event loop, serve an abstract Unix socket,
    connect to it (handshake), a registration, a call the other way, close.

    Why: a forked child pays for the first run of any code in copy-on-write page faults
    (the interpreter's type-attribute cache, code objects warming up, codecs and objects
    built lazily on first use), which was half of a forked worker's CPU; after the template
    has run it, each child writes less (decision 0028). Each loop is closed before any fork
    and nothing here starts a thread; a failure only leaves the children slower."""
    for _ in range(REHEARSALS):
        try:
            with asyncio.Runner(loop_factory=new_event_loop) as runner:
                runner.run(asyncio.wait_for(_rehearsal(), 5.0))
        except Exception:
            return


async def _rehearsal() -> None:
    CONFIG_DECODER.decode(CONFIG_ENCODER.encode(WorkerConfig(
        worker_id="", name="", module="", qualname="", main_path=None, sys_path=[],
        secret=b"", master_address="", settings=RpcSettings(), init_arg=b"",
        shutdown_on="connection_closed", redirect_stderr=Redirect("forward"), umask=None,
        parent="")))
    secret = os.urandom(32)
    accepted: asyncio.Future[RpcConnection] = asyncio.get_running_loop().create_future()

    async def register(registration: Registration) -> None:
        pass

    async def add(x: int) -> int:
        return x + 1

    server = await serve_in_temporary_directory(
        "rpc_parallel-rehearsal-", "r.sock", secret=secret,
        implementations=[Implementation(REGISTER, register)],
        on_connection=lambda connection: _set_once(accepted, connection))
    try:
        link = await connect(address_of(server), secret=secret,
                             implementations=[Implementation(_REHEARSED, add)])
        await link.call(REGISTER, Registration(worker_id="", pid=0, host="", address=""))
        master_side = await accepted
        await master_side.call(_REHEARSED, 1)
        master_side.close("rehearsed")
        await link.wait_closed()
    finally:
        server.close("rehearsed")
        await server.wait_closed()


def _set_once(future: asyncio.Future[RpcConnection], connection: RpcConnection) -> None:
    if not future.done():
        future.set_result(connection)


def import_worker_class(config: WorkerConfig) -> type[Worker[Any]]:
    module = _import_module(config.module, config.main_path)
    target: Any = module
    for part in config.qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, Worker)):
        raise TypeError(f"{config.module}.{config.qualname} is not an rp.Worker subclass")
    return target


def _redirect_stderr(config: WorkerConfig) -> None:
    redirect = config.redirect_stderr
    if redirect.mode == "forward":
        return
    sys.stderr.flush()
    if redirect.mode == "devnull":
        fd = os.open(os.devnull, os.O_WRONLY)
    else:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if redirect.mode == "append" else os.O_TRUNC)
        fd = os.open(redirect.path, flags, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


class _Reports:
    """Failures outside any call: written to stderr, sent to the master over the link, then
    the worker exits with code 1."""

    def __init__(self, name: str, exit_future: asyncio.Future[int]) -> None:
        self.name = name
        self.exit_future = exit_future
        self.link: RpcConnection | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def fatal(self, report: ErrorInfo) -> None:
        sys.stderr.write(f"rpc_parallel worker {self.name}: {report.message}\n{report.traceback}")
        sys.stderr.flush()
        self.tasks.add(asyncio.get_running_loop().create_task(self._send(report)))

    async def _send(self, report: ErrorInfo) -> None:
        link = self.link
        try:
            if link is not None and not link.is_closed:
                with contextlib.suppress(RpcError, TimeoutError):
                    await asyncio.wait_for(link.call(WORKER_FAILED, report), timeout=2.0)
        finally:  # Whatever happened to the report, the worker exits.
            if not self.exit_future.done():
                self.exit_future.set_result(1)

    async def wait(self) -> None:
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=2.0)


def _report_failures(
    instance: Worker[Any], reports: _Reports
) -> Callable[[FunctionSpec, BaseException], None]:
    """Route the loop's unhandled errors and failed one-way calls to ``report_fatal``;
    returns the one-way handler for the connections."""
    set_fatal_reporter(instance, reports.fatal)

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if not isinstance(error, BaseException):
            error = RuntimeError(str(context.get("message")))
        report_fatal(instance, error, str(context.get("message", "unhandled error")))

    asyncio.get_running_loop().set_exception_handler(on_loop_error)

    def one_way_failed(spec: FunctionSpec, error: BaseException) -> None:
        report_fatal(instance, error, f"one-way function {spec.name} failed")

    return one_way_failed


def has_init_worker_state(cls: type[Worker[Any]]) -> bool:
    """Whether ``cls`` defines ``init_worker_state``. Without one nothing runs between
    connecting back and the registration, so no ``initializing`` connection (nor its
    thread and loop) is needed: the registration ends both phases of the spawn
    (decision 0018), and the init argument was checked against its type at spawn."""
    return cls.init_worker_state is not Worker.init_worker_state


async def _init_worker_state(
    config: WorkerConfig, cls: type[Worker[Any]], instance: Worker[Any]
) -> ErrorInfo | None:
    """Run ``init_worker_state``; what it raised, for the registration."""
    try:
        init_arg = make_decoder(cls.init_type()).decode(config.init_arg)
        initialized = instance.init_worker_state(init_arg)  # a plain def runs here, at once
        if initialized is not None:
            await initialized
    except Exception as error:
        return remote_error_info(error, text_limit(config.settings.max_message_size))
    return None


class _Initializing:
    """A connection to the master held open while ``init_worker_state`` runs, on a thread and
    event loop of its own: it tells the master that this process has started and connected
    (ending the spawn's ``connection_timeout``), and its heartbeats say the process is alive
    even while a blocking ``init_worker_state`` holds the main loop. The master takes its
    loss before the registration as the worker stopped or died during initialisation."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._loop: asyncio.AbstractEventLoop | None = None
        self._finish: asyncio.Future[None] | None = None
        self._thread = threading.Thread(
            target=self._run, name="rpc_parallel-initializing", daemon=True)

    async def start(self) -> None:
        """Connect and announce; returns once the master knows (raises if it cannot)."""
        loop = asyncio.get_running_loop()
        self._announced: asyncio.Future[None] = loop.create_future()
        self._main_loop = loop
        self._thread.start()
        await self._announced

    def _run(self) -> None:
        rpc_run(self._hold())

    async def _hold(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._finish = self._loop.create_future()
        config = self.config
        try:
            connection = await connect_to_master(config, {
                "secret": config.secret, "implementations": [], "settings": config.settings})
            await connection.call(INITIALIZING, config.worker_id)
        except BaseException as error:
            self._main_loop.call_soon_threadsafe(_set_exception, self._announced, error)
            return
        self._main_loop.call_soon_threadsafe(_set_result, self._announced)
        try:
            await self._finish
        finally:
            connection.close("initialized")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(connection.wait_closed(), timeout=2.0)

    def finish(self) -> None:
        """Close the connection (after the registration); its thread then ends. Does not
        wait: nothing may run between the registration and the stderr redirection."""
        loop, finish = self._loop, self._finish
        if loop is not None and finish is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(_set_result, finish)


def _set_result(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


async def _construction_failed(config: WorkerConfig, failure: ErrorInfo) -> int:
    """The worker class's ``__init__`` raised: say so in the registration (the spawn's
    ``SpawnError`` shows it, once); exit code 1."""
    link = await connect_to_master(config, {
        "secret": config.secret, "implementations": [], "settings": config.settings})
    try:
        await link.call(REGISTER, Registration(
            worker_id=config.worker_id, pid=os.getpid(), host=socket.gethostname(),
            address="", error=failure, failed_in="__init__",
        ))
    finally:
        link.close("worker could not be constructed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(link.wait_closed(), timeout=2.0)
    return 1


async def serve(config: WorkerConfig, cls: type[Worker[Any]]) -> int:
    """Serve ``cls`` as the worker ``config`` describes; the process's exit code."""
    exit_future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    set_exit_future(exit_future)
    try:
        instance = cls()
    except Exception as error:
        return await _construction_failed(config, remote_error_info(error))
    reports = _Reports(config.name, exit_future)
    one_way_failed = _report_failures(instance, reports)
    initializing: _Initializing | None = None
    failure: ErrorInfo | None = None
    if has_init_worker_state(cls):  # (else the registration ends both phases at once)
        initializing = _Initializing(config)
        await initializing.start()
        failure = await _init_worker_state(config, cls, instance)
    implementations = cls.implementations(instance)
    serving: dict[str, Any] = {
        "secret": config.secret, "implementations": implementations,
        "settings": config.settings, "on_one_way_error": one_way_failed,
    }
    servers, address = await _open_servers(config, serving)
    try:
        instance._rpc_parallel_server = servers[0]
        link = reports.link = await connect_to_master(config, serving)
        try:
            await link.call(REGISTER, Registration(
                worker_id=config.worker_id, pid=os.getpid(), host=socket.gethostname(),
                address=address, error=failure,
            ))
        finally:
            if initializing is not None:
                initializing.finish()
        if failure is not None:
            return 1
        _redirect_stderr(config)
        _registered.set()
        code = await _wait_for_exit(config, link, exit_future)
        await reports.wait()
        await _close(servers, link)
        return code
    finally:
        for server in servers:
            server.close("worker exiting")
        remove_socket_directory(address, WORKER_PREFIX)


async def _open_servers(config: WorkerConfig, serving: dict[str, Any]) -> tuple[list[Server], str]:
    """The worker's servers (a Unix socket; TCP + TLS too once the application has a
    network) and the address it advertises, listing both (``unix:<path> tls:<host>:<port>``)."""
    server = await serve_in_temporary_directory(WORKER_PREFIX, "worker.sock", **serving)
    network = config.network
    if network is None:
        return [server], address_of(server).wire
    try:
        tls_server = await serve_tcp(
            network.listen_host, 0, ssl=server_context(network.identity), **serving
        )
    except BaseException:
        server.close()
        remove_socket_directory(address_of(server).wire, WORKER_PREFIX)
        raise
    bound = address_of(tls_server)
    assert isinstance(bound, Tcp)
    advertised = Tcp(advertised_host(network), bound.port, tls=True)
    return [server, tls_server], f"{address_of(server).wire} {advertised.wire}"


async def connect_to_master(config: WorkerConfig, serving: dict[str, Any]) -> RpcConnection:
    """Connect to the master over the first of its addresses usable here (its Unix socket,
    or TCP + TLS at the host found from the ``Network`` record)."""
    candidates = alternatives(config.master_address)
    if not candidates:
        raise ConnectionError(f"no usable master address in {config.master_address!r}")
    try:
        return await connect(candidates[0], identity=process().identity, **serving)
    except OSError as error:
        raise ConnectionError(
            f"rpc_parallel worker {config.name} on {socket.gethostname()}: cannot connect "
            f"back to the master at {candidates[0].wire}: {error}"
        ) from None


async def _wait_for_exit(
    config: WorkerConfig, link: RpcConnection, exit_future: asyncio.Future[int]
) -> int:
    """Until an exit is requested, or (unless ``called_shutdown``) the master's link ends."""
    waiting: set[asyncio.Future[Any]] = {exit_future}
    if config.shutdown_on != "called_shutdown":
        waiting.add(asyncio.ensure_future(link.wait_closed()))
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    return exit_future.result() if exit_future.done() else 0


async def _close(servers: list[Server], link: RpcConnection) -> None:
    for server in servers:
        server.close("worker exiting")
    link.close("worker exiting")
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(link.wait_closed(), *(s.wait_closed() for s in servers)), timeout=2.0
        )


def _run_then_exit(coroutine: Coroutine[Any, Any, int]) -> int:
    """Run ``serve`` on a new loop and return its exit code without closing the loop:
    closing waits for the threads of plain ``def`` calls still running, and the process
    is about to ``os._exit`` anyway (a worker cut off from its master must not wait for a
    long computation to end)."""
    return asyncio.Runner(loop_factory=new_event_loop).run(coroutine)


def main(forked: bool = False) -> NoReturn:
    """Entry point of a worker process. ``forked``: a fork server's child, which dies with
    its template (the parent-death signal), and the template ends with the master: no
    thread needs to watch stdin for the master's end."""
    os.environ.pop("RPC_PARALLEL_WORKER", None)
    config_file = os.environ.pop(CONFIG_FILE_VARIABLE, None)
    try:
        config = read_config() if config_file is None else read_config_file(config_file)
    except EOFError as error:
        if config_file is not None:
            sys.stderr.write(f"rpc_parallel worker: {error}\n")
            os._exit(2)
        os._exit(0)  # The master closed stdin (or died) before sending the configuration.
    except (ValueError, OSError) as error:
        sys.stderr.write(f"rpc_parallel worker: cannot read the configuration: {error}\n")
        os._exit(2)
    if config.umask is not None:
        os.umask(config.umask)
    state = process()
    state.state = State.WORKER
    state.secret = config.secret
    state.settings = config.settings
    state.worker_name = config.name
    if config.network is not None:
        join(config.network)
    sys.path[:] = config.sys_path
    _use_argv(config.argv)
    if config_file is None and not forked:  # A config file: heartbeats alone watch the master.
        threading.Thread(target=_watch_stdin, args=(config.shutdown_on,), daemon=True).start()
    _start_up.resume()  # before the worker's own module, which may make garbage at import
    try:
        cls = import_worker_class(config)
    except BaseException as error:
        _die(error, f"rpc_parallel worker {config.name}: cannot import worker class "
                    f"{config.module}.{config.qualname}", 3)
    try:
        code = _run_then_exit(serve(config, cls))
    except SystemExit as error:
        code = _exit_status(error, config.name)
    except BaseException as error:
        _die(error, "", 1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_status(error: SystemExit, name: str) -> int:
    """The exit status ``sys.exit(...)`` in a worker function asks for, as the interpreter
    would give it (None: 0; an int: itself; anything else: printed, 1), with one line
    saying where it was called; no event-loop traceback."""
    status = error.code
    where = _user_frame(error)
    sys.stderr.write(f"rpc_parallel worker {name}: sys.exit({status!r}) called{where}\n")
    if status is None:
        return 0
    if isinstance(status, int):
        return status & 0xFF
    sys.stderr.write(f"{status}\n")
    return 1


def _user_frame(error: BaseException) -> str:
    """`` in function (file:line)`` of the last frame outside the library and asyncio."""
    library = os.path.dirname(os.path.abspath(__file__))
    outside = [
        frame for frame in traceback.extract_tb(error.__traceback__)
        if not frame.filename.startswith((library, os.path.dirname(asyncio.__file__)))
        and frame.name != "exit"
    ]
    if not outside:
        return ""
    frame = outside[-1]
    return f" in {frame.name} ({frame.filename}:{frame.lineno})"


def _die(error: BaseException, what: str, code: int) -> NoReturn:
    """Print the traceback (and ``what: error`` if given), then exit with ``code`` at once:
    the master reads the tail of stderr into its ``SpawnError`` / ``WorkerDied``. A script
    without its main guard gets the message alone (its traceback is the event loop's)."""
    spawning = sys.modules.get("rpc_parallel._spawn")  # raises it; imported by a spawn only
    if spawning is not None and isinstance(error, spawning.UnguardedMainError):
        sys.stderr.write(f"rpc_parallel worker: {error}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    traceback.print_exception(error)
    if what:
        sys.stderr.write(f"{what}: {type(error).__name__}: {error}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_as_worker_if_requested() -> None:
    """For custom entry points (``rp.Local(command=[...])``): become the worker if this
    process was launched as one, otherwise return."""
    if os.environ.get("RPC_PARALLEL_WORKER") == "1" and "worker" in sys.argv:
        os.environ.pop("RPC_PARALLEL_WORKER", None)
        main()


