"""``rp.Managed``: one worker, spawned on first use and respawned after it dies."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, Self, TypeVar

from ._functions import Runnable
from ._handle import WorkerHandle
from ._worker_type import Worker
from .errors import ConnectionClosed, WorkerDied, WorkerFailure
from .pool._pool import Spawnable

W = TypeVar("W", bound="Worker[Any]")
I = TypeVar("I")  # noqa: E741
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

logger = logging.getLogger("rpc_parallel")


class Managed(Generic[W]):
    """A worker of class ``W`` managed for you: nothing is spawned until the first ``run``;
    a call in flight when the worker dies raises ``rp.WorkerDied`` and the next call spawns
    a new one (``on_failure`` is told of the death, ``on_respawn(handle)`` of the new worker).
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
        self._dead: set[int] = set()
        self._spawns = 0
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def handle(self) -> WorkerHandle[W] | None:
        """The current worker's handle (None before the first call or after a death)."""
        return self._handle

    async def _current(self) -> WorkerHandle[W]:
        if self._closed:
            raise ConnectionClosed("rp.Managed: closed")
        handle = self._handle
        if handle is not None and id(handle) not in self._dead:
            return handle
        async with self._lock:
            handle = self._handle
            if handle is None or id(handle) in self._dead:
                if handle is not None:
                    await asyncio.gather(handle.close(), return_exceptions=True)
                handle = self._handle = await self._spawn()
        return handle

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
        """Run ``function`` on the worker, spawning it first if needed (typed like
        ``handle.run``)."""
        handle = await self._current()
        try:
            return await handle.run(function, *args, **kwargs)
        except WorkerDied:
            self._dead.add(id(handle))
            raise

    async def close(self) -> None:
        """Stop the worker (if one is running); later calls raise ``ConnectionClosed``."""
        self._closed = True
        handle, self._handle = self._handle, None
        if handle is not None:
            await handle.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.shield(self.close())
