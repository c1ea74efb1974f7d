"""``rp.WorkerPool``: ``n`` workers of one class, each call to the least-loaded one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, ParamSpec, Protocol, Self, TypeVar

from .._functions import Rpc, Runnable
from .._handle import WorkerHandle
from .._worker_type import Worker
from ..errors import ConnectionClosed, Error

W = TypeVar("W", bound="Worker[Any]")
W_co = TypeVar("W_co", bound="Worker[Any]", covariant=True)
I_contra = TypeVar("I_contra", contravariant=True)
P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class Spawnable(Protocol[W_co, I_contra]):
    """A worker class seen through its ``spawn``: ``type[Adder]`` is a
    ``Spawnable[Adder, int]``. This ties the init argument's type to the class's."""

    def spawn(self, init_arg: I_contra, /) -> Awaitable[WorkerHandle[W_co]]: ...


class WorkerPool(Generic[W]):
    """An async context manager of ``n`` workers of class ``W``.

    ``await pool.run(W.f, ...)`` runs ``f`` on the worker with the fewest calls in flight
    (typed like ``handle.run``); ``pool.submit(W.f, ...)`` is the fast path for rpc functions.
    Workers are spawned concurrently on entry and all closed on exit.
    """

    def __init__(self, worker: Spawnable[W, I_contra], init_arg: I_contra, n: int,
                 **spawn_options: Any) -> None:
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"WorkerPool: n must be a positive int, got {n!r}")
        self._worker_class = worker
        self._init_arg = init_arg
        self._options: list[dict[str, Any]] = [dict(spawn_options) for _ in range(n)]
        self._handles: list[WorkerHandle[W]] = []
        self._load: dict[int, int] = {}
        self._closed = False

    @classmethod
    def _of_options(cls, worker: Spawnable[W, Any], init_arg: Any,
                    options: Sequence[dict[str, Any]]) -> WorkerPool[W]:
        """A pool whose workers each have their own spawn options (map_reduce's Config)."""
        pool = cls(worker, init_arg, max(1, len(options)))
        pool._options = [dict(o) for o in options]
        return pool

    @property
    def workers(self) -> list[WorkerHandle[W]]:
        """The handles of the pool's workers (started by ``async with``)."""
        return list(self._handles)

    def __len__(self) -> int:
        return len(self._handles)

    async def start(self) -> Self:
        """Spawn every worker (concurrently); on any failure, close those that started."""
        if self._handles:
            return self
        results = await asyncio.gather(
            *(self._spawn(options) for options in self._options), return_exceptions=True
        )
        handles = [r for r in results if isinstance(r, WorkerHandle)]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await asyncio.gather(*(h.close() for h in handles), return_exceptions=True)
            raise errors[0]
        self._handles = handles
        self._load = {id(h): 0 for h in handles}
        return self

    async def _spawn(self, options: dict[str, Any]) -> WorkerHandle[W]:
        spawn: Callable[..., Awaitable[WorkerHandle[W]]] = self._worker_class.spawn
        return await spawn(self._init_arg, **options)

    def _adopt(self, handle: WorkerHandle[W]) -> None:
        """Add a worker spawned apart (map_reduce starts on its first worker up)."""
        self._handles.append(handle)
        self._load[id(handle)] = 0

    async def _replace(self, dead: WorkerHandle[W]) -> WorkerHandle[W]:
        """Spawn a worker in place of ``dead`` (same options); used by map's retries."""
        index = self._handles.index(dead)
        self._load.pop(id(dead), None)
        with contextlib.suppress(Error, OSError):
            await dead.close()
        handle = await self._spawn(self._options[index % len(self._options)])
        self._handles[index] = handle
        self._load[id(handle)] = 0
        return handle

    async def close(self) -> None:
        """Close every worker (each exits); waits for them."""
        self._closed = True
        handles, self._handles = self._handles, []
        await asyncio.gather(*(h.close() for h in handles), return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.shield(self.close())

    def _least_loaded(self) -> WorkerHandle[W]:
        if not self._handles:
            raise ConnectionClosed(
                "WorkerPool: no workers (use `async with` or `await pool.start()` first)"
                if not self._closed else "WorkerPool: the pool is closed"
            )
        return min(self._handles, key=lambda h: self._load[id(h)])

    async def run(
        self, function: Runnable[W, P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``function`` on the least-loaded worker; its result's type follows its kind."""
        handle = self._least_loaded()
        key = id(handle)
        self._load[key] += 1
        try:
            return await handle.run(function, *args, **kwargs)
        finally:
            if key in self._load:
                self._load[key] -= 1

    def submit(
        self, function: Rpc[W, P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> asyncio.Future[R]:
        """Start an ``rpc`` call now on the least-loaded worker; a future of its result."""
        handle = self._least_loaded()
        key = id(handle)
        self._load[key] += 1
        future = handle.submit(function, *args, **kwargs)

        def done(_: object) -> None:
            if key in self._load:
                self._load[key] -= 1

        future.add_done_callback(done)
        return future
