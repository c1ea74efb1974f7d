"""The master server: where spawned workers connect back, register and report failures.

One per event loop, started by the first spawn. Every worker keeps its link to it open for
its whole life; when the master dies the link drops and the worker exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, Callable
from typing import Any, Protocol

from ._builtins import INITIALIZING, REGISTER, WORKER_FAILED, Network, Registration
from ._network import LISTEN_HOST, MASTER_HOST, network_config
from ._prestart import WarmProcesses
from ._sockets import remove_socket_directory, serve_in_temporary_directory
from ._state import process
from .errors import ConnectionClosed, ProtocolError
from .launch._launcher import connect_back_of
from .rpc import Connection as RpcConnection
from .rpc import Implementation, Server, current_connection, serve_tcp, server_context
from .rpc.frames import ErrorInfo
from .rpc.transport import Tcp, address_of


class Supervised(Protocol):
    """What the master knows of a worker it spawned (a ``WorkerHandle``)."""

    def _failure_reported(self, report: ErrorInfo) -> None:
        """The worker reported a failure outside any call."""

    async def _master_exiting(self) -> None:
        """The master is closing: end the worker as its ``shutdown_on`` says."""

    async def _death(self, error: ConnectionClosed) -> Callable[[str], BaseException]:
        """What calls in flight fail with once the link to the worker is lost."""
        ...


class Master:
    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[tuple[RpcConnection, Registration]]] = {}
        self.initializing: dict[str, asyncio.Future[RpcConnection]] = {}
        """By worker id: set when the worker has connected and starts ``init_worker_state``,
        to the connection it holds open meanwhile (its loss: the worker stopped or died)."""
        self.handles: dict[RpcConnection, Supervised] = {}
        self.supervisors: set[asyncio.Task[None]] = set()
        self.server: Server | None = None
        self.network_server: Server | None = None
        """TCP + TLS on ``LISTEN_HOST``: started when a remote worker is first spawned."""
        self._starting: asyncio.Lock = asyncio.Lock()
        self.warm = WarmProcesses()
        """Where a spawn gets a process without starting an interpreter (the fork servers)."""
        self._closing = False
        self.guard: AsyncGenerator[None, None] | None = None
        """Closes this master when its event loop ends (``_until_the_loop_ends``)."""

    async def address(self, remote: bool = False) -> str:
        """The master server's address for a new worker, starting the server on first use.

        ``remote``: the worker may run on another host (``Launcher.needs_network``). The one
        place that choice is made: such a worker connects back over TCP + TLS
        (``tls:@master:<port>``, the host found on the worker's side, see ``_network``), and
        that server starts only now; local workers use the Unix socket.
        """
        async with self._starting:
            if remote:
                if self.network_server is None:
                    self.network_server = await serve_tcp(
                        LISTEN_HOST, 0, ssl=server_context(process().tls_identity()),
                        **self._serving(),
                    )
                bound = address_of(self.network_server)
                assert isinstance(bound, Tcp)
                return Tcp(MASTER_HOST, bound.port, tls=True).wire
            if self.server is None:
                self.server = await serve_in_temporary_directory(
                    "rpc_parallel-master-", "master.sock", **self._serving()
                )
            return address_of(self.server).wire

    def network(self, how: object, remote: bool) -> Network | None:
        """The ``Network`` part of a new worker's configuration: None until the master
        listens on TCP, so purely local applications never make keys or listen beyond
        loopback."""
        identity = process().identity
        if self.network_server is None or identity is None:
            return None
        return network_config(identity, connect_back_of(how), remote)

    def _serving(self) -> dict[str, Any]:
        """What both master servers serve, and how."""
        return {
            "secret": process().secret,
            "implementations": [
                Implementation(INITIALIZING, self._initializing),
                Implementation(REGISTER, self._register),
                Implementation(WORKER_FAILED, self._worker_failed),
            ],
            "settings": process().rpc_settings(),
            "translate_closed": self._translate_link,
        }

    async def _translate_link(
        self, link: RpcConnection, error: ConnectionClosed
    ) -> Callable[[str], BaseException]:
        # The handle, set as the link's user data by the spawn (it outlives ``handles``).
        handle: Supervised | None = link.user_data
        if handle is None:
            return lambda function: error
        return await handle._death(error)

    async def _initializing(self, worker_id: str) -> None:
        started = self.initializing.get(worker_id)
        if started is None:
            raise ProtocolError(f"no spawn is waiting for worker id {worker_id}")
        if not started.done():
            started.set_result(current_connection.get())

    async def _register(self, registration: Registration) -> None:
        pending = self.pending.get(registration.worker_id)
        if pending is None or pending.done():
            raise ProtocolError(f"no spawn is waiting for worker id {registration.worker_id}")
        pending.set_result((current_connection.get(), registration))

    async def _worker_failed(self, report: ErrorInfo) -> None:
        handle = self.handles.get(current_connection.get())
        if handle is not None:
            handle._failure_reported(report)

    def own(self, task: asyncio.Task[None]) -> None:
        self.supervisors.add(task)
        task.add_done_callback(self.supervisors.discard)

    async def close(self) -> None:
        """Close every worker link (workers not in called_shutdown mode exit), then the
        fork servers (after the workers: their forked workers die with them), the server."""
        for handle in list(self.handles.values()):
            await handle._master_exiting()
        if self.supervisors:
            await asyncio.wait(list(self.supervisors), timeout=10.0)
        await self.warm.close()
        if self.network_server is not None:
            self.network_server.close()
            await self.network_server.wait_closed()
            self.network_server = None
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            remove_socket_directory(address_of(self.server).wire, "rpc_parallel-master-")
            self.server = None


_masters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Master] = (
    weakref.WeakKeyDictionary()
)


def current_master() -> Master:
    loop = asyncio.get_running_loop()
    master = _masters.get(loop)
    if master is None:
        master = _masters[loop] = Master()
        guard = master.guard = _until_the_loop_ends(master)
        with contextlib.suppress(StopIteration):  # Run it to its yield: the loop knows it.
            guard.asend(None).send(None)
    return master


async def _until_the_loop_ends(master: Master) -> AsyncGenerator[None, None]:
    """An async generator the event loop closes when it ends (``asyncio.run`` and its
    runners call ``shutdown_asyncgens``): a loop that ends without ``close()`` of its
    handles (nor ``start_app``'s end) still closes the master's servers and its fork
    servers (the supervisors, cancelled first, end and reap the workers)."""
    try:
        yield
    finally:
        # The loop's tasks are cancelled by now (each supervisor has ended its worker): stop
        # the fork servers, close the servers, and wait for nothing else.
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(master.warm.close(), timeout=5.0)
        if master.network_server is not None:
            master.network_server.close("the master's event loop ended")
            master.network_server = None
        if master.server is not None:
            master.server.close("the master's event loop ended")
            remove_socket_directory(address_of(master.server).wire, "rpc_parallel-master-")
            master.server = None


def existing_master() -> Master | None:
    return _masters.get(asyncio.get_running_loop())
