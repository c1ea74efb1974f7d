"""The master server: where spawned workers connect back, register and report failures.

One per event loop, started by the first spawn. Every worker keeps its link to it open for
its whole life; when the master dies the link drops and the worker exits.
"""

from __future__ import annotations

import asyncio
import atexit
import shutil
import sys
import tempfile
import uuid
import weakref
from collections.abc import Callable
from typing import Protocol

from ._builtins import REGISTER, WORKER_FAILED, ErrorReport, Preload, Registration
from ._state import process
from .errors import ConnectionClosed, ProtocolError
from .launch._process import WorkerProcess, send, start
from .launch.options import Forward, Local
from .rpc import Connection as RpcConnection
from .rpc import Implementation, Server, current_connection, serve_unix

WarmKey = tuple[str, str, str | None]
"""(module, qualname, main script path) of a worker class."""



class Supervised(Protocol):
    """What the master knows of a worker it spawned (a ``WorkerHandle``)."""

    def _failure_reported(self, report: ErrorReport) -> None:
        """The worker reported a failure outside any call."""

    async def _master_exiting(self) -> None:
        """The master is closing: end the worker as its ``shutdown_on`` says."""

    async def _death(self, error: ConnectionClosed) -> Callable[[str], BaseException]:
        """What calls in flight fail with once the link to the worker is lost."""
        ...


class Master:
    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[tuple[RpcConnection, Registration]]] = {}
        self.handles: dict[RpcConnection, Supervised] = {}
        self.supervisors: set[asyncio.Task[None]] = set()
        self.server: Server | None = None
        self._directory: str | None = None
        self._starting: asyncio.Lock = asyncio.Lock()
        self.warm: dict[WarmKey, asyncio.Future[WorkerProcess | None]] = {}
        self._closing = False

    async def address(self) -> str:
        """The master server's address, starting it on first use."""
        async with self._starting:
            if self.server is None:
                self._directory = tempfile.mkdtemp(prefix="rpc_parallel-master-")
                atexit.register(shutil.rmtree, self._directory, True)
                path = f"{self._directory}/master.sock"
                self.server = await serve_unix(
                    path,
                    secret=process().secret,
                    implementations=[
                        Implementation(REGISTER, self._register),
                        Implementation(WORKER_FAILED, self._worker_failed),
                    ],
                    settings=process().rpc_settings(),
                    translate_closed=self._translate_link,
                )
            return f"unix:{self.server.address}"

    async def _translate_link(
        self, link: RpcConnection, error: ConnectionClosed
    ) -> Callable[[str], BaseException]:
        # The handle, set as the link's user data by the spawn (it outlives ``handles``).
        handle: Supervised | None = link.user_data
        if handle is None:
            return lambda function: error
        return await handle._death(error)

    async def _register(self, registration: Registration) -> None:
        pending = self.pending.get(registration.worker_id)
        if pending is None or pending.done():
            raise ProtocolError(f"no spawn is waiting for worker id {registration.worker_id}")
        pending.set_result((current_connection.get(), registration))

    async def _worker_failed(self, report: ErrorReport) -> None:
        handle = self.handles.get(current_connection.get())
        if handle is not None:
            handle._failure_reported(report)

    async def take_warm(self, key: WarmKey) -> WorkerProcess | None:
        """A pre-started process for this worker class, if one was started and is alive.

        It may still be importing; the spawn's configuration waits in its stdin meanwhile.
        """
        starting = self.warm.pop(key, None)
        if starting is None:
            return None
        try:
            worker = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(_release)  # The spawn was cancelled: let it exit.
            raise
        if worker is not None and worker.returncode is not None:
            worker.close_pipes()
            return None
        return worker

    def warm_up(self, key: WarmKey) -> None:
        """Start one process for the next spawn of this class in the background: it
        imports rpc_parallel and the class's module, then waits for its configuration."""
        if self._closing or key in self.warm:
            return
        self.warm[key] = asyncio.ensure_future(self._warm(key))

    async def _warm(self, key: WarmKey) -> WorkerProcess | None:
        module, qualname, main_path = key
        name = f"{qualname.rpartition('.')[2]}-{uuid.uuid4().hex[:8]}"
        try:
            worker = await start(
                name, how=Local(), env=None, cwd=None, redirect_stdout=Forward(),
                redirect_stderr=Forward(), new_session=True,
            )
        except Exception:
            return None  # The next spawn of this class starts cold and says what is wrong.
        await send(worker, Preload(module=module, main_path=main_path, sys_path=list(sys.path)))
        return worker

    def own(self, task: asyncio.Task[None]) -> None:
        self.supervisors.add(task)
        task.add_done_callback(self.supervisors.discard)

    async def close(self) -> None:
        """Close every worker link (workers not in called_shutdown mode exit) and the server."""
        self._closing = True
        starting, self.warm = list(self.warm.values()), {}
        warm = [w for w in await asyncio.gather(*starting) if w is not None]
        for worker in warm:
            worker.close_pipes()  # End of file on stdin: it exits.
        for worker in warm:
            await worker.stop(grace=2.0)
        for handle in list(self.handles.values()):
            await handle._master_exiting()
        if self.supervisors:
            await asyncio.wait(list(self.supervisors), timeout=10.0)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


def _release(starting: asyncio.Future[WorkerProcess | None]) -> None:
    worker = None if starting.cancelled() else starting.result()
    if worker is not None:
        worker.close_pipes()  # End of file on stdin: an unclaimed process exits.


_masters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Master] = (
    weakref.WeakKeyDictionary()
)


def current_master() -> Master:
    loop = asyncio.get_running_loop()
    master = _masters.get(loop)
    if master is None:
        master = _masters[loop] = Master()
    return master


def existing_master() -> Master | None:
    return _masters.get(asyncio.get_running_loop())
