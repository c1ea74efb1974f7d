"""Supervision of one spawned worker: its link to the master and its process's exit.

The ``Supervisor`` watches both; when either ends it gives the process its grace, kills it
if need be, reaps it, removes its socket directory, and tells ``on_failure`` of an exit
nobody asked for. It also makes the ``WorkerDied`` that calls in flight fail with.
Imports the master (to be owned by it) and the launch seam's ``LaunchedProcess``; knows
nothing of handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Callable

from ._master import current_master
from ._sockets import WORKER_PREFIX, remove_socket_directory
from .errors import ConnectionClosed, WorkerDied, WorkerFailure
from .launch import LaunchedProcess
from .launch._launcher import end_explanation
from .rpc import Connection as RpcConnection
from .rpc.errors import CloseKind
from .rpc.frames import ErrorInfo

logger = logging.getLogger("rpc_parallel")

OnFailure = Callable[[WorkerFailure], object]


def describe_exit(returncode: int) -> str:
    """``exited with code N`` or ``killed by SIGNAME``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


def exit_status(returncode: int | None) -> tuple[int | None, int | None]:
    """(exit code, signal) of a return code (negative: killed by that signal)."""
    if returncode is None:
        return None, None
    return (returncode, None) if returncode >= 0 else (None, -returncode)


class Supervisor:
    """Watches one spawned worker process and its link to the master."""

    def __init__(
        self,
        *,
        name: str,
        pid: int,
        address: str,
        link: RpcConnection,
        worker_process: LaunchedProcess,
        on_failure: OnFailure | None,
        outlives_master: bool = False,
    ) -> None:
        self.name = name
        self.outlives_master = outlives_master
        """``called_shutdown``: the end of the master's event loop does not end it."""
        self.pid = pid
        self.address = address
        self.link = link
        self.process = worker_process
        self.on_failure = on_failure
        self.expected_exit = False
        """Its exit was asked for (close, shutdown): not a failure."""
        self.failure: WorkerFailure | None = None
        self.returncode: int | None = None
        self.detached = False
        """It outlives the master (``called_shutdown``): no longer watched."""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._watch())
        current_master().own(self._task)

    def detach(self) -> None:
        """Stop watching: the master's server is closing, which ends the link, and that
        must not get a worker that outlives the master killed."""
        self.detached = True
        if self._task is not None:
            self._task.cancel()

    async def wait_exit(self) -> None:
        """Wait until the process has exited and been reaped."""
        if self.detached:
            self.returncode = await self.process.stop(grace=5.0)
        elif self._task is not None:
            await asyncio.shield(self._task)

    async def _watch(self) -> None:
        link = self.link
        closed = asyncio.ensure_future(link.wait_closed())
        exited = asyncio.ensure_future(self.process.wait())
        try:
            try:
                await asyncio.wait({closed, exited}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                await self._loop_ending()
                raise
            returncode = await self._reap(closed, exited)
            self.returncode = returncode
            link.sweep_shared_memory()  # what it lent after the link's close, then died
            remove_socket_directory(self.address, WORKER_PREFIX)
            if not self.expected_exit and self.failure is None:
                exit_code, signal_number = exit_status(returncode)
                self.notify(WorkerFailure(
                    self.name, self.describe_end(returncode, link.close_kind, link.close_reason),
                    exit_code=exit_code, signal=signal_number,
                    stderr_tail=self.process.stderr_tail(),
                ))
        finally:
            closed.cancel()
            exited.cancel()
            current_master().handles.pop(link, None)

    async def _loop_ending(self) -> None:
        """Cancelled without ``detach()``: the master's event loop is ending with this worker
        open (no ``close()``). End it as the master's exit would, and reap it, rather than
        leave it running (or a zombie) for as long as this process lives."""
        if self.detached or self.outlives_master:
            return
        self.expected_exit = True
        self.link.close("the master's event loop ended")
        with contextlib.suppress(Exception):
            self.returncode = await self.process.stop(grace=2.0)

    async def _reap(self, closed: asyncio.Future[str], exited: asyncio.Future[int | None]) -> int:
        """The link or the process has ended: end the other, give the grace, reap."""
        if exited.done():
            if not closed.done():
                # Read what it sent before dying (a failure report) up to the link's end of
                # file, which its exit has caused; bounded in case a child holds it.
                await asyncio.wait({closed}, timeout=1.0)
            returncode = exited.result()
            assert returncode is not None
            self.link.close(f"worker process {describe_exit(returncode)}")
            return await self.process.stop(grace=0)
        if self.link.close_kind == "heartbeat_timeout":
            return await self.process.stop(grace=0)  # It stopped answering: no grace.
        return await self.process.stop(grace=5.0 if self.expected_exit else 1.0)

    def _master_stall(self) -> str:
        """If this master's event loop was blocked lately, the blame is the master's."""
        seconds = self.link.recent_stall()
        settings = self.link.settings
        if seconds is None or seconds + settings.heartbeat_interval < settings.heartbeat_timeout:
            return ""
        return (f"; but the master's event loop was blocked (stalled) for {seconds:.1f} s "
                f"(longer than heartbeat_timeout, the worker heard nothing from the master "
                f"and ended the link): keep the master's loop free (await, or run blocking "
                f"work in a thread)")

    def describe_end(self, returncode: int, kind: CloseKind | None, reason: str | None) -> str:
        """How the worker ended: its exit status, or that it stopped answering (killed)."""
        who = f"worker {self.name} (pid {self.pid}{getattr(self.process, 'where', '')})"
        if kind == "heartbeat_timeout":
            return f"{who} stopped answering ({reason}); killed"
        return f"{who} {describe_exit(returncode)}{end_explanation(self.process)}"

    def failure_reported(self, report: ErrorInfo) -> None:
        """The worker reported a failure outside any call (it exits next)."""
        self.failure = WorkerFailure(
            self.name, report.message, remote_type=report.type_name,
            remote_traceback=report.traceback,
        )
        self.notify(self.failure)

    def notify(self, failure: WorkerFailure) -> None:
        if self.on_failure is None:
            logger.error("%s", failure)
            return
        try:
            result = self.on_failure(failure)
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                current_master().own(task)
        except Exception:
            logger.exception("on_failure of worker %s raised", self.name)

    async def death(
        self, error: ConnectionClosed, handle_closed: bool
    ) -> Callable[[str], BaseException]:
        """What calls fail with once the connection to the worker is lost: ``WorkerDied``
        with its exit status and stderr tail (known once the process has been reaped)."""
        if handle_closed and self.expected_exit and self.returncode is None:
            closed = ConnectionClosed(f"worker {self.name}: this handle is closed")
            return lambda function: closed
        if self._task is not None and error.kind != "heartbeat_timeout":
            # Its exit status says more; a worker that stopped answering is not waited for
            # (calls fail at the heartbeat timeout itself; it is killed meanwhile).
            await asyncio.wait({self._task}, timeout=10.0)
        returncode = self.returncode
        if returncode is None:
            returncode = self.process.returncode
        if returncode is None and error.kind == "heartbeat_timeout":
            text = self.describe_end(0, error.kind, error.reason)
        elif returncode is None:
            text = f"worker {self.name} (pid {self.pid}) lost: {error.reason}"
        else:
            text = self.describe_end(returncode, error.kind, error.reason)
        if self.failure is not None:
            text += f", after reporting: {self.failure.message}"
        text += self._master_stall()
        tail = self.process.stderr_tail()
        exit_code, signal_number = exit_status(returncode)
        return lambda function: WorkerDied(
            f"{text} (while running {function})", worker=self.name, function=function,
            exit_code=exit_code, signal=signal_number, stderr_tail=tail,
        )
