"""Pre-started worker processes: one process per worker class started ahead of the next
spawn of that class, so the spawn skips the interpreter's start and the imports.

Only for the default local launch (``Launcher.can_use_prestarted``). Imports the launch
seam; the master owns one ``Prestarted``.
"""

from __future__ import annotations

import asyncio
import sys
import uuid

from ._builtins import CONFIG_ENCODER, Preload
from .launch import Forward, LaunchedProcess, LaunchRequest, Local

ClassKey = tuple[str, str, str | None]
"""(module, qualname, main script path) of a worker class."""


class Prestarted:
    """The pre-started processes of one master, by worker class."""

    def __init__(self) -> None:
        self._starting: dict[ClassKey, asyncio.Future[LaunchedProcess | None]] = {}
        self._closed = False

    async def take(self, key: ClassKey) -> LaunchedProcess | None:
        """A pre-started process for this worker class, if one was started and is alive.

        It may still be importing; the spawn's configuration waits in its stdin meanwhile.
        """
        starting = self._starting.pop(key, None)
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

    def start(self, key: ClassKey) -> None:
        """Start one process for the next spawn of this class in the background: it
        imports rpc_parallel and the class's module, then waits for its configuration."""
        if self._closed or key in self._starting:
            return
        self._starting[key] = asyncio.ensure_future(self._start(key))

    async def _start(self, key: ClassKey) -> LaunchedProcess | None:
        module, qualname, main_path = key
        name = f"{qualname.rpartition('.')[2]}-{uuid.uuid4().hex[:8]}"
        try:
            how = Local()
            worker = await how.launch(LaunchRequest(
                name=name, command=how.worker_command(name), env=None, cwd=None,
                redirect_stdout=Forward(), redirect_stderr=Forward(), new_session=True,
            ))
        except Exception:
            return None  # The next spawn of this class starts cold and says what is wrong.
        await worker.send(CONFIG_ENCODER.encode(
            Preload(module=module, main_path=main_path, sys_path=list(sys.path),
                    argv=list(sys.argv))
        ))
        return worker

    async def close(self) -> None:
        """End every pre-started process (end of file on stdin: it exits), reaped."""
        self._closed = True
        starting, self._starting = list(self._starting.values()), {}
        started = [w for w in await asyncio.gather(*starting) if w is not None]
        for worker in started:
            worker.close_pipes()
        for worker in started:
            await worker.stop(grace=2.0)


def _release(starting: asyncio.Future[LaunchedProcess | None]) -> None:
    worker = None if starting.cancelled() else starting.result()
    if worker is not None:
        worker.close_pipes()  # End of file on stdin: an unclaimed process exits.
