"""Map and map-reduce over worker processes: the Python form of Rpc_parallel's ``Map_reduce``.

Write the work as a class (importable, like a worker class)::

    class Square(rp.MapFunction[None, int, int]):
        async def map(self, x: int) -> int:
            return x * x

    async for y in rp.map_reduce.map(rp.map_reduce.Config(local=4), range(100), Square, None):
        ...

Inputs are any iterable or async iterable, read lazily; small items travel in batches sized to
their measured cost. Every verb takes a ``Config`` (workers spawned for that map alone) or an
open ``MapPool`` (``async with config.open() as pool``: workers started once, reused by each
map given the pool). See docs/guide.md ("Map and reduce") and docs/decisions/0012, 0023.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import sys
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from ._handle import WorkerHandle
from .errors import ProtocolError, RemoteError, WorkerDied
from .launch import Forward
from .launch.slurm import slurm_allocation
from .pool._engine import Batch, Engine, Inputs
from .pool._function import MapFunction, MapReduceFunction
from .pool._map_pool import MapPool
from .pool._map_worker import BatchResult, MapSpec, MapWorker, type_arguments
from .pool._progress import Progress, length_of
from .rpc.functions import ENCODER, make_decoder

if TYPE_CHECKING:
    # The one name not public: the union of redirections spawn accepts (for annotations).
    from .launch.redirection import Redirection

Param = TypeVar("Param")
In = TypeVar("In")
Out = TypeVar("Out")
Acc = TypeVar("Acc")

__all__ = [
    "Config",
    "MapFunction",
    "MapOutputs",
    "MapPool",
    "MapReduceFunction",
    "find_map",
    "map",
    "map_reduce",
    "map_reduce_commutative",
    "map_unordered",
]


# ---------------------------------------------------------------------- configuration


def usable_cores() -> int:
    """The number of cores this process may run on (its affinity), at least 1."""
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return int(counter() or 1)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Config:
    """Where the map's workers run: ``local`` processes here (default: one per usable core)
    and ``remote`` entries ``(how, n)``: ``n`` workers spawned with ``how=`` (``rp.Remote``,
    ``rp.Slurm``, ``rp.Wrap``). The other fields are passed to every worker's spawn."""

    local: int | None = None
    remote: Sequence[tuple[Any, int]] = ()
    redirect_stdout: Redirection = field(default_factory=Forward)
    redirect_stderr: Redirection = field(default_factory=Forward)
    env: Mapping[str, str] | None = None
    cwd: str | os.PathLike[str] | None = None
    connection_timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.local is None:
            object.__setattr__(self, "local", usable_cores())
        local = self.local
        if not isinstance(local, int) or isinstance(local, bool) or local < 0:
            raise ValueError(f"Config: local must be an int >= 0, got {local!r}")
        for entry in self.remote:
            if not (isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[1], int)
                    and entry[1] >= 0):
                raise ValueError(f"Config: each remote entry must be (how, n) with n >= 0, "
                                 f"got {entry!r}")
        if self.workers() == 0:
            raise ValueError("Config: no workers (local=0 and no remote entries)")

    def workers(self) -> int:
        """How many workers a map with this config runs."""
        return (self.local or 0) + sum(n for _, n in self.remote)

    def spawn_options(self) -> list[dict[str, Any]]:
        """One ``spawn`` keyword set per worker."""
        common: dict[str, Any] = {"redirect_stderr": self.redirect_stderr,
                                  "connection_timeout": self.connection_timeout}
        if not isinstance(self.redirect_stdout, Forward):
            common["redirect_stdout"] = self.redirect_stdout
        if self.env is not None:
            common["env"] = self.env
        if self.cwd is not None:
            common["cwd"] = self.cwd
        options = [dict(common) for _ in range(self.local or 0)]
        for how, n in self.remote:
            options += [{**common, "how": how} for _ in range(n)]
        return options

    def open(self) -> MapPool:
        """A pool of this config's workers, started by ``async with`` (or ``await
        pool.start()``) and reused by every map given it in place of the config: a map then
        spends no time spawning. See ``MapPool``."""
        return MapPool(self.spawn_options())

    @classmethod
    def from_slurm(
        cls,
        *,
        how: Callable[[str, int], Any] | None = None,
        environ: Mapping[str, str] | None = None,
        local: int = 0,
        **options: Any,
    ) -> Config:
        """A config sized from the current Slurm allocation, as
        ``rpc_parallel.launch.slurm.slurm_allocation()`` reads it: one worker per task, on
        the node the task is on. ``how(node, cpus_per_task)`` makes the launcher of a node's
        workers; by default ``rp.Slurm(nodelist=node, cpus_per_task=...)``. ``RuntimeError``
        outside an allocation."""
        allocation = slurm_allocation(environ)
        if allocation is None:
            raise RuntimeError("Config.from_slurm(): not inside a Slurm allocation "
                               "(SLURM_JOB_ID is not set)")
        if how is None:
            how = _default_slurm_launcher()
        per_task = allocation.cpus_per_task
        remote = [(how(node, per_task), n)
                  for node, n in zip(allocation.nodes, allocation.tasks_per_node, strict=True)
                  if n > 0]
        return cls(local=local, remote=remote, **options)


def _default_slurm_launcher() -> Callable[[str, int], Any]:
    from .launch import Slurm

    def launcher(node: str, cpus_per_task: int) -> Any:
        return Slurm(nodelist=node, cpus_per_task=cpus_per_task)

    return launcher


# ---------------------------------------------------------------------- a run


def _spec_of(function: type[MapFunction[Any, Any, Any]], param: Any) -> MapSpec:
    if not (isinstance(function, type) and issubclass(function, MapFunction)):
        raise TypeError(f"expected a subclass of rp.MapFunction, got {function!r}")
    qualname = function.__qualname__
    if "<locals>" in qualname:
        raise TypeError(f"map function {qualname} is defined inside a function; define it at "
                        "module top level so workers can import it")
    module, main_path = function.__module__, None
    if module in ("__main__", "__mp_main__"):
        main_path = getattr(sys.modules.get(module), "__file__", None)
        if main_path is None:
            raise TypeError(f"map function {qualname} is defined in an interactive __main__; "
                            "define it in an importable module")
        main_path = os.path.abspath(main_path)
    param_type = type_arguments(function, MapFunction)[0]
    try:
        encoded = ENCODER.encode(param)
        make_decoder(param_type).decode(encoded)
    except (TypeError, msgspec.ValidationError) as error:
        raise ProtocolError(f"{qualname}: param: {error}") from None
    return MapSpec(module=module, qualname=qualname, main_path=main_path, param=encoded)


class _Run:
    """One map's engine and progress over its workers: its own (spawned for it from a
    ``Config``, closed on exit) or an open ``MapPool``'s (its function loaded into them on
    entry, dropped on exit)."""

    def __init__(self, config: Config | MapPool, function: type[MapFunction[Any, Any, Any]],
                 param: Any, inputs: Iterable[Any] | AsyncIterable[Any], *, retries: int,
                 progress: bool, reduce: bool) -> None:
        if not isinstance(config, Config | MapPool):
            raise TypeError(f"expected an rp.map_reduce.Config or MapPool, got {config!r}")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        self.spec = _spec_of(function, param)
        self.name = function.__qualname__
        out_type = type_arguments(function, MapFunction)[2]
        self.outputs: msgspec.msgpack.Decoder[Any] = make_decoder(list[out_type])  # type: ignore[valid-type]
        self.acc: msgspec.msgpack.Decoder[Any] = make_decoder(out_type)
        self.owned = isinstance(config, Config)
        self.pool = (MapPool(config.spawn_options(), _preload=self.spec)
                     if isinstance(config, Config) else config)
        self.engine = Engine(self.pool, Inputs(inputs, self.name), function=self.name,
                             retries=retries, reduce=reduce)
        self.progress = Progress(self.name, length_of(inputs)) if progress else None

    async def __aenter__(self) -> _Run:
        if self.owned:
            await self.pool._start_early()
        else:
            self.engine.key, self.engine.loads = self.pool._open_map(self.spec)
            self.engine.cost = self.pool._cost_of(self.spec)
        return self

    async def __aexit__(self, exc_type: object, *exc_info: object) -> None:
        await asyncio.shield(self._close(ended=exc_type is None))

    async def _close(self, *, ended: bool) -> None:
        """Close the map: its own workers, or its part of the pool's. Having ``ended`` (not
        left early, nor failed), it has nothing left in the pool's workers: their stops are
        sent, not waited for."""
        try:
            await self.engine.close()
        finally:
            if not self.owned:
                self.pool._remember_cost(self.spec, self.engine.cost)
            try:
                if self.owned:
                    await self.pool.close()
                else:
                    await self.pool._close_map(self.engine.key, wait=not ended)
            finally:
                if self.progress is not None:
                    self.progress.close()

    async def batches(self) -> AsyncGenerator[tuple[Batch, BatchResult], None]:
        async with contextlib.aclosing(self.engine.run()) as results:
            async for batch, result in results:
                if self.progress is not None:
                    self.progress.update(len(batch.items))
                yield batch, result

    def decode_outputs(self, batch: Batch, result: BatchResult) -> list[Any]:
        try:
            outputs: list[Any] = self.outputs.decode(result.outputs)
            return outputs
        except msgspec.ValidationError as error:
            raise ProtocolError(
                f"{self.name}: the output of {batch.describe()} is not of the declared "
                f"output type: {error}"
            ) from None


# ---------------------------------------------------------------------- the verbs


async def map_unordered(
    config: Config | MapPool,
    inputs: Iterable[In] | AsyncIterable[In],
    function: type[MapFunction[Param, In, Out]],
    param: Param,
    *,
    retries: int = 1,
    progress: bool = False,
) -> AsyncGenerator[tuple[int, Out], None]:
    """``(index, output)`` for every input, in completion order."""
    async with _Run(config, function, param, inputs, retries=retries, progress=progress,
                    reduce=False) as run, contextlib.aclosing(run.batches()) as batches:
        async for batch, result in batches:
            for offset, y in enumerate(run.decode_outputs(batch, result)):
                yield batch.start + offset, y


def map(
    config: Config | MapPool,
    inputs: Iterable[In] | AsyncIterable[In],
    function: type[MapFunction[Param, In, Out]],
    param: Param,
    *,
    retries: int = 1,
    progress: bool = False,
) -> MapOutputs[Out]:
    """The output of every input, in input order (computed ahead of the consumer only
    within a bounded window): an async iterator (``async for y in map(...)``), which can
    also hand its outputs over a batch at a time (``batches()``) or all at once
    (``await map(...).collect()``), without the per-item cost of ``async for``."""
    return MapOutputs(functools.partial(_ordered_batches, config, inputs, function, param,
                                        retries, progress))


class MapOutputs(AsyncIterator[Out]):
    """What ``map`` returns: its outputs in input order. Nothing starts until it is first
    read. Read it one way: item by item (``async for``, ``anext``), or ``batches()``, or
    ``collect()``; ``aclose()`` (or leaving ``async with contextlib.aclosing(...)``) stops
    the map and its workers at once, as leaving any of these early does.

    ``async for`` costs CPython about 50 ns per item (an awaitable and a ``StopIteration``
    each), as much as the rest of the master's work for tiny items; ``batches()`` and
    ``collect()`` hand over the lists the workers answered. See
    docs/decisions/0031-map-outputs.md."""

    __slots__ = ("_batches", "_items", "_start", "_way")

    def __init__(self, start: Callable[[bool], AsyncGenerator[list[Out], None]]) -> None:
        self._start = start
        """Makes the map's generator of batches; its argument: whether batches ramp up."""
        self._batches: AsyncGenerator[list[Out], None] | None = None
        self._items: AsyncGenerator[Out, None] | None = None
        self._way: str | None = None

    def _take(self, way: str, *, ramp: bool = True) -> AsyncGenerator[list[Out], None]:
        """The map's batches, read by ``way`` (started on the first read). ``collect()``
        takes every output at the end, so its batches need not ramp up to hurry a first
        one (each small batch costs about as much as a full one)."""
        if self._way is not None and self._way != way:
            raise RuntimeError(f"map outputs: already read by {self._way}; read them one way "
                               f"only (async for, batches() or collect())")
        if self._batches is None:
            self._way = way
            self._batches = self._start(ramp)
        return self._batches

    def __aiter__(self) -> AsyncGenerator[Out, None]:
        # The item generator itself: ``async for`` then takes the interpreter's fast path
        # for async generators, with no Python-level ``__anext__`` per item.
        if self._items is None:
            self._items = _items_of(self._take("async for"))
        return self._items

    async def __anext__(self) -> Out:
        return await anext(self.__aiter__())

    def batches(self) -> AsyncGenerator[list[Out], None]:
        """The outputs a batch at a time, in input order (each list is the next outputs)."""
        return self._take("batches()")

    async def collect(self) -> list[Out]:
        """Every output, in input order, as one list."""
        outputs: list[Out] = []
        async with contextlib.aclosing(self._take("collect()", ramp=False)) as batches:
            async for batch in batches:
                outputs += batch
        return outputs

    async def aclose(self) -> None:
        """Stop the map: its workers (or its part of a pool's) at once."""
        if self._items is not None:
            await self._items.aclose()
        if self._batches is not None:
            await self._batches.aclose()


async def _items_of(batches: AsyncGenerator[list[Out], None]) -> AsyncGenerator[Out, None]:
    async with contextlib.aclosing(batches):
        async for outputs in batches:
            for y in outputs:
                yield y


async def _ordered_batches(
    config: Config | MapPool,
    inputs: Iterable[Any] | AsyncIterable[Any],
    function: type[MapFunction[Any, Any, Any]],
    param: Any,
    retries: int,
    progress: bool,
    ramp: bool,
) -> AsyncGenerator[list[Any], None]:
    """Each batch's outputs, in input order (a batch waits for those before it)."""
    async with _Run(config, function, param, inputs, retries=retries, progress=progress,
                    reduce=False) as run:
        run.engine.ramp = ramp
        position = [0]  # the index of the next output to hand out
        run.engine.window = lambda: position[0] + run.engine.window_size()
        waiting: dict[int, list[Any]] = {}
        async with contextlib.aclosing(run.batches()) as batches:
            async for batch, result in batches:
                waiting[batch.start] = run.decode_outputs(batch, result)
                while position[0] in waiting:
                    outputs = waiting.pop(position[0])
                    position[0] += len(outputs)
                    yield outputs


async def find_map(
    config: Config | MapPool,
    inputs: Iterable[In] | AsyncIterable[In],
    function: type[MapFunction[Param, In, Out]],
    param: Param,
    *,
    retries: int = 1,
    progress: bool = False,
) -> Out | None:
    """The first output (in input order) that is not None, or None; once it is known, every
    worker stops."""
    outputs = map(config, inputs, function, param, retries=retries, progress=progress)
    async with contextlib.aclosing(outputs.batches()) as batches:
        async for batch in batches:
            for y in batch:
                if y is not None:
                    return y
    return None


async def map_reduce_commutative(
    config: Config | MapPool,
    inputs: Iterable[In] | AsyncIterable[In],
    function: type[MapReduceFunction[Param, In, Acc]],
    param: Param,
    *,
    retries: int = 1,
    progress: bool = False,
) -> Acc | None:
    """``combine`` of every input's ``map``, in any order (None for no inputs)."""
    result: Acc | None = await _reduce(config, inputs, function, param, retries, progress,
                                       ordered=False)
    return result


async def map_reduce(
    config: Config | MapPool,
    inputs: Iterable[In] | AsyncIterable[In],
    function: type[MapReduceFunction[Param, In, Acc]],
    param: Param,
    *,
    retries: int = 1,
    progress: bool = False,
) -> Acc | None:
    """``combine`` of every input's ``map``, combining only neighbours so input order is
    kept (``combine`` need not be commutative); None for no inputs."""
    result: Acc | None = await _reduce(config, inputs, function, param, retries, progress,
                                       ordered=True)
    return result


async def _reduce(config: Config | MapPool, inputs: Iterable[Any] | AsyncIterable[Any],
                  function: type[MapReduceFunction[Any, Any, Any]], param: Any, retries: int,
                  progress: bool, *, ordered: bool) -> Any:
    if not (isinstance(function, type) and issubclass(function, MapReduceFunction)):
        raise TypeError(f"map_reduce needs a subclass of rp.MapReduceFunction (with combine), "
                        f"got {function!r}")
    async with _Run(config, function, param, inputs, retries=retries, progress=progress,
                    reduce=True) as run:
        run.engine.ramp = False  # (nothing is handed out before the end: no output to hurry)
        reducer = _Reducer(run, ordered, retries)
        async with contextlib.aclosing(run.batches()) as batches:
            async for batch, result in batches:
                reducer.add(batch.start, batch.start + len(batch.items), result.outputs)
                await reducer.collect()
        return await reducer.finish()


class _Reducer:
    """Accumulators of input ranges ``[start, end)``, combined on the workers: with
    ``ordered``, only adjacent ranges (left first); otherwise any two. A combine whose
    worker died is sent again (its worker replaced), at most ``retries + 1`` times."""

    def __init__(self, run: _Run, ordered: bool, retries: int) -> None:
        self.run = run
        self.ordered = ordered
        self.retries = retries
        self.ready: dict[int, tuple[int, bytes]] = {}  # start -> (end, encoded accumulator)
        self.combining: dict[asyncio.Future[bytes], _Combine] = {}
        self.deaths: dict[tuple[int, int], int] = {}

    def add(self, start: int, end: int, acc: bytes) -> None:
        self.ready[start] = (end, acc)
        self._pair()

    def _pair(self) -> None:
        starts = sorted(self.ready)
        if self.ordered:
            pairs = [(a, b) for a, b in itertools.pairwise(starts) if self.ready[a][0] == b]
        else:
            pairs = list(zip(starts[::2], starts[1::2], strict=False))
        used: set[int] = set()
        for a, b in pairs:
            if a in used or b in used:
                continue
            used |= {a, b}
            (_, left), (end, right) = self.ready.pop(a), self.ready.pop(b)
            handle = self.run.pool._least_loaded()
            future = handle.submit(MapWorker.combine, self.run.engine.key, left, right)
            self.combining[future] = _Combine(a, b, end, left, right, handle)

    async def collect(self) -> None:
        """Take in the combines that have finished (raising the first failure)."""
        for future in [f for f in self.combining if f.done()]:
            combine = self.combining.pop(future)
            try:
                self.ready[combine.a] = (combine.end, future.result())
            except RemoteError as error:
                self._name(error, combine)
                raise
            except WorkerDied as error:
                await self._died(combine, error)
        self._pair()

    def _name(self, error: RemoteError, combine: _Combine) -> None:
        error.function = f"{self.run.name}.combine"
        error.args = (f"{error.function} raised {error.remote_type}: {error.remote_message}",)
        error.index = combine.b  # type: ignore[attr-defined]
        error.add_note(f"rpc_parallel.map_reduce: raised combining the accumulators of inputs "
                       f"{combine.a}..{combine.b - 1} and {combine.b}..{combine.end - 1}")

    async def _died(self, combine: _Combine, error: WorkerDied) -> None:
        key = (combine.a, combine.b)
        self.deaths[key] = self.deaths.get(key, 0) + 1
        if self.deaths[key] > self.retries + 1:
            error.index = combine.b  # type: ignore[attr-defined]
            raise error
        await self.run.pool._replace(combine.handle)
        self.ready[combine.a] = (combine.b, combine.left)
        self.ready[combine.b] = (combine.end, combine.right)

    async def finish(self) -> Any:
        while self.combining:
            await asyncio.wait(self.combining, return_when=asyncio.FIRST_COMPLETED)
            await self.collect()
        if not self.ready:
            return None
        ((_, acc),) = self.ready.values()
        return self.run.acc.decode(acc)


class _Combine:
    """One combine in flight: ``[a, b)`` with ``[b, end)`` on ``handle``."""

    __slots__ = ("a", "b", "end", "handle", "left", "right")

    def __init__(self, a: int, b: int, end: int, left: bytes, right: bytes,
                 handle: WorkerHandle[MapWorker]) -> None:
        self.a, self.b, self.end = a, b, end
        self.left, self.right, self.handle = left, right, handle
