"""``rp.map_reduce.MapPool``: map workers started once and reused by several maps.

A map given a ``Config`` spawns its workers, loads its function into them as their init
argument, and closes them when it ends. A ``MapPool`` (``config.open()``) spawns the same
workers empty; each map given the pool ``load``s its function into every worker as it starts
(a key per map, so maps may share the pool at the same time) and ``stop``s it when it ends.
See docs/decisions/0023-warm-map.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Sequence
from typing import Any, Self

from .._handle import WorkerHandle
from ..errors import ConnectionClosed, RemoteError
from ._map_worker import MapSpec, MapWorker
from ._pool import WorkerPool

STOP_SECONDS = 5.0
"""How long the end of a map waits for its workers to acknowledge ``stop``."""
REMEMBERED_COSTS = 64
"""How many (function, param) pairs a pool remembers the measured cost of (decision 0023)."""


class MapPool:
    """Running map workers, reused by every map given the pool instead of a ``Config``::

        async with rp.map_reduce.Config(local=4).open() as pool:
            async for y in rp.map_reduce.map(pool, inputs, Square, None):
                ...
            total = await rp.map_reduce.map_reduce(pool, inputs, Sum, None)

    Workers are spawned on entry (``start``) and closed on exit (``close``). Between maps they
    hold no user state: each map runs its function's ``init(param)`` in every worker as it
    starts, and drops the object when it ends. A worker that dies is replaced (the maps
    running then load their functions into the new one).
    """

    def __init__(self, options: Sequence[dict[str, Any]], *, _preload: MapSpec | None = None,
                 ) -> None:
        self._pool: WorkerPool[MapWorker] = WorkerPool._of_options(MapWorker, _preload, options)
        # The maps running on the pool: key -> function spec (key 0: loaded at spawn).
        self._active: dict[int, MapSpec] = {0: _preload} if _preload is not None else {}
        self._keys = itertools.count(1)
        self._replacing = asyncio.Lock()
        # Spawns still running (``_start_early``): each worker joins as its spawn ends.
        self._spawning: set[asyncio.Task[WorkerHandle[MapWorker]]] = set()
        self._started = False
        self._closed = False
        # Seconds per item that earlier maps of a function (with that param) measured here:
        # a later map of it sizes its first batches from that, with no 1-item probes.
        self._costs: dict[MapSpec, float] = {}

    @property
    def workers(self) -> list[WorkerHandle[MapWorker]]:
        """The handles of the running workers."""
        return self._pool.workers

    def __len__(self) -> int:
        return len(self._pool)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "not started"
        return f"<rp.map_reduce.MapPool of {len(self._pool._options)} workers, {state}>"

    async def start(self) -> Self:
        """Spawn every worker (concurrently); on a failure, none is left running."""
        if self._closed:
            raise ConnectionClosed("MapPool: the pool is closed")
        if not self._started:
            await self._pool.start()
            self._started = True
        return self

    async def close(self) -> None:
        """Close every worker (each exits); maps still running on the pool then fail."""
        self._closed = True
        spawning, self._spawning = self._spawning, set()
        try:
            # A spawn is let finish (cancelling one midway could leave its process behind).
            started = await asyncio.gather(*spawning, return_exceptions=True)
            await asyncio.gather(*(h.close() for h in started if isinstance(h, WorkerHandle)),
                                 return_exceptions=True)
        finally:
            await self._pool.close()

    async def _start_early(self) -> None:
        """Start spawning every worker; return once the first one is up (a map with a
        ``Config`` starts on it, and the others join as they come up: ``_adopt_spawned``).
        The first spawn failure is raised, by this or by ``_adopt_spawned``."""
        options = self._pool._options
        init_arg = self._pool._init_arg
        spawn = self._pool._worker_class.spawn
        self._spawning = {asyncio.ensure_future(spawn(init_arg, **o)) for o in options}
        self._started = True
        try:
            await asyncio.wait(self._spawning, return_when=asyncio.FIRST_COMPLETED)
            self._adopt_spawned()
        except BaseException:
            await asyncio.shield(self.close())
            raise

    def _adopt_spawned(self) -> None:
        """Add the workers whose spawns have ended to the pool (raising a failed spawn's
        error)."""
        for task in [t for t in self._spawning if t.done()]:
            self._spawning.discard(task)
            self._pool._adopt(task.result())

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.shield(self.close())

    # ----- what a map does with the pool

    def _open_map(self, spec: MapSpec) -> tuple[int, dict[asyncio.Future[None], WorkerHandle[MapWorker]]]:
        """Start loading a map's function into every worker: its key, and the futures of the
        loads. They are not waited for: the map's first batches follow each load on its
        connection at once, and a worker maps them once the load is done (a load that
        fails is raised by the engine: ``load_error``)."""
        if self._closed or not self._started:
            raise ConnectionClosed(
                "MapPool: the pool is closed" if self._closed
                else "MapPool: not started (use `async with config.open() as pool`)"
            )
        key = next(self._keys)
        self._active[key] = spec
        return key, {h.submit(MapWorker.load, key, spec): h for h in self.workers}

    def _cost_of(self, spec: MapSpec) -> float | None:
        """The seconds per item that the last map of ``spec`` on this pool measured."""
        return self._costs.get(spec)

    def _remember_cost(self, spec: MapSpec, cost: float | None) -> None:
        """Keep what a map of ``spec`` measured (the last ``REMEMBERED_COSTS`` specs)."""
        if cost is None:
            return
        self._costs.pop(spec, None)  # (re-inserted last: the oldest goes first)
        self._costs[spec] = cost
        if len(self._costs) > REMEMBERED_COSTS:
            del self._costs[next(iter(self._costs))]

    @staticmethod
    def load_error(error: BaseException, name: str) -> BaseException:
        """What a failed load of map function ``name`` is raised as: its ``init``'s error,
        named ``name.init``."""
        if isinstance(error, RemoteError):
            error.function = f"{name}.init"
            error.args = (f"{error.function} raised {error.remote_type}: "
                          f"{error.remote_message}",)
        return error

    async def _close_map(self, key: int, *, wait: bool = True) -> None:
        """Drop a map from every worker: what it still has queued there is refused. With
        ``wait``, until every worker has acknowledged (at most ``STOP_SECONDS``); otherwise
        the stops are sent and not waited for (a map that ended normally has nothing left
        in the workers: its stop only frees its function object)."""
        self._active.pop(key, None)
        if self._closed:
            return
        stops = [h.submit(MapWorker.stop, key) for h in self.workers]
        if not wait:
            for stop in stops:
                stop.add_done_callback(_retrieve)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True),
                                   STOP_SECONDS)

    async def _replace(self, dead: WorkerHandle[MapWorker]) -> None:
        """Spawn a worker in place of ``dead`` (once, however many maps saw it die) and load
        the running maps' functions into it."""
        async with self._replacing:
            if dead not in self._pool.workers:
                return  # replaced already, for another map
            handle = await self._pool._replace(dead)
            for key, spec in list(self._active.items()):
                if key != 0:  # key 0 was loaded by the spawn itself
                    await handle.run(MapWorker.load, key, spec)

    def _least_loaded(self) -> WorkerHandle[MapWorker]:
        return self._pool._least_loaded()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a future's outcome seen (a stop nobody waits for: its worker may be closing)."""
    if not future.cancelled():
        future.exception()
