"""``rp.Managed``: one worker, spawned on first use, reconnected after a dropped connection
while it lives, and respawned after it dies.

Calls go over a connection of Managed's own to the worker's address, not over the master's
link to it (which must not drop: a worker whose link drops exits). When that connection drops,
the worker's supervisor tells whether the process lives: if it does, the calls in flight fail
with ``rp.ConnectionClosed`` and the next call opens a new connection to the same worker; if it
died, they fail with ``rp.WorkerDied`` and the next call spawns a new worker. See
docs/decisions/0013-pool-and-managed.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, Self, TypeVar

from ._functions import Runnable
from ._handle import Connection, WorkerHandle, open_connection
from ._worker_type import Worker
from .errors import ConnectionClosed, HandshakeError, WorkerDied, WorkerFailure
from .pool._pool import Spawnable
from .rpc import Connection as RpcConnection

W = TypeVar("W", bound="Worker[Any]")
I = TypeVar("I")  # noqa: E741
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

logger = logging.getLogger("rpc_parallel")

DEATH_GRACE = 2.0
"""How long a dropped connection waits for the worker's link to end (or its process to exit)
before it takes the worker for alive. A killed worker's link ends within milliseconds of the
connection; a live one's does not end at all."""

Verdict = Callable[[str], BaseException]


class _ManagedConnection(Connection[W]):
    """Managed's connection to its worker: once it drops, the verdict (dead or alive) is made
    once and given to every call it fails."""

    def __init__(self, handle: WorkerHandle[W], connection: RpcConnection,
                 managed: Managed[W]) -> None:
        super().__init__(handle, connection)
        self._managed = managed
        self._verdict: Verdict | None = None

    async def _death(self, error: ConnectionClosed) -> Verdict:
        if error.kind == "closed_here":
            return lambda function: error
        if self._verdict is None:
            self._verdict = await self._managed._judge(self.handle, error)
        return self._verdict

    @property
    def is_closed(self) -> bool:
        return self._connection.is_closed


class Managed(Generic[W]):
    """A worker of class ``W`` managed for you: nothing is spawned until the first ``run``;
    a call in flight when the worker dies raises ``rp.WorkerDied`` and the next call spawns
    a new one (``on_failure`` is told of the death, ``on_respawn(handle)`` of the new worker);
    a call in flight when the connection to a live worker drops raises
    ``rp.ConnectionClosed`` and the next call reconnects to the same worker.
    ``await m.close()`` or ``async with`` stops it.
    """

    def __init__(self, worker: Spawnable[W, I], init_arg: I, *,
                 on_respawn: Callable[[WorkerHandle[W]], object] | None = None,
                 **spawn_options: Any) -> None:
        self._worker_class = worker
        self._init_arg = init_arg
        self._on_respawn = on_respawn
        self._user_on_failure: Callable[[WorkerFailure], object] | None = (
            spawn_options.pop("on_failure", None)
        )
        self._options = spawn_options
        self._handle: WorkerHandle[W] | None = None
        self._connection: _ManagedConnection[W] | None = None
        self._dead: set[int] = set()
        self._spawns = 0
        self.reconnects = 0
        """How many times a dropped connection to a live worker was opened again."""
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def handle(self) -> WorkerHandle[W] | None:
        """The current worker's handle (None before the first call or after a death)."""
        return self._handle

    def _usable(self) -> _ManagedConnection[W] | None:
        connection = self._connection
        if connection is None or connection.is_closed or id(connection.handle) in self._dead:
            return None
        return connection

    async def _current(self) -> _ManagedConnection[W]:
        """The connection to use: reopened if it dropped, to a new worker if it died."""
        if self._closed:
            raise ConnectionClosed("rp.Managed: closed")
        connection = self._usable()
        if connection is not None:
            return connection
        async with self._lock:
            connection = self._usable()
            if connection is None:
                connection = self._connection = await self._connect()
        return connection

    async def _connect(self) -> _ManagedConnection[W]:
        handle = self._handle
        if handle is not None and id(handle) not in self._dead:
            try:
                connection = await self._open(handle)
            except (OSError, HandshakeError, ConnectionClosed) as error:
                if not await self._died(handle):
                    raise ConnectionClosed(
                        f"rp.Managed: cannot reconnect to worker {handle.name} "
                        f"(pid {handle.pid}), which is alive: {error}"
                    ) from None
            else:
                self.reconnects += 1
                logger.info("rp.Managed: reconnected to worker %s (pid %s)", handle.name,
                            handle.pid)
                return connection
        if handle is not None:
            await asyncio.gather(handle.close(), return_exceptions=True)
        handle = self._handle = await self._spawn()
        return await self._open(handle)

    async def _open(self, handle: WorkerHandle[W]) -> _ManagedConnection[W]:
        box: list[_ManagedConnection[W]] = []

        async def translate(_: RpcConnection, error: ConnectionClosed) -> Verdict:
            return await box[0]._death(error)

        rpc_connection = await open_connection(handle.address, translate)
        box.append(_ManagedConnection(handle, rpc_connection, self))
        return box[0]

    async def _judge(self, handle: WorkerHandle[W], error: ConnectionClosed) -> Verdict:
        """What calls fail with once the connection to ``handle``'s worker dropped: its death
        (``WorkerDied``, marking it dead) or, while it lives, ``ConnectionClosed``."""
        if await self._died(handle):
            return await handle._death(error)
        closed = error.kind

        def alive(function: str) -> BaseException:
            return ConnectionClosed(
                f"rp.Managed: the connection to worker {handle.name} (pid {handle.pid}) "
                f"dropped while running {function} ({error.reason}); the worker is alive "
                "and the next call reconnects to it", closed,
            )

        return alive

    async def _died(self, handle: WorkerHandle[W]) -> bool:
        """Whether ``handle``'s worker is dead: its link to the master ends (or its process
        exits) within ``DEATH_GRACE``. A dead worker is marked so."""
        if id(handle) in self._dead:
            return True
        link = handle._link
        supervisor = handle._supervisor
        if link is not None and not link.is_closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(link.wait_closed()), DEATH_GRACE)
        exited = supervisor is not None and supervisor.process.returncode is not None
        if exited or link is None or link.is_closed:
            self._dead.add(id(handle))
            return True
        return False

    async def _spawn(self) -> WorkerHandle[W]:
        spawn: Callable[..., Any] = self._worker_class.spawn
        box: list[WorkerHandle[W]] = []

        def on_failure(failure: WorkerFailure) -> object:
            if box:
                self._dead.add(id(box[0]))
            return None if self._user_on_failure is None else self._user_on_failure(failure)

        handle: WorkerHandle[W] = await spawn(self._init_arg, on_failure=on_failure,
                                                 **self._options)
        box.append(handle)
        self._spawns += 1
        if self._spawns > 1 and self._on_respawn is not None:
            try:
                result = self._on_respawn(handle)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("on_respawn of rp.Managed raised")
        return handle

    async def run(
        self, function: Runnable[W, P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``function`` on the worker, spawning it first (or reconnecting) if needed
        (typed like ``handle.run``)."""
        connection = await self._current()
        try:
            return await connection.run(function, *args, **kwargs)
        except WorkerDied:
            self._dead.add(id(connection.handle))
            raise

    async def close(self) -> None:
        """Stop the worker (if one is running); later calls raise ``ConnectionClosed``."""
        self._closed = True
        connection, self._connection = self._connection, None
        handle, self._handle = self._handle, None
        if connection is not None:
            connection._connection.close("rp.Managed closed")
        if handle is not None:
            await handle.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.shield(self.close())
