"""The library's worker class that runs a user's ``MapFunction`` on batches of inputs.

The master never ships code: it sends the module and qualified name of the user's class (which
must be importable, like a worker class) and the encoded ``param``; the worker imports the class,
builds one instance, awaits its ``init(param)`` and then serves ``map_batch`` / ``combine`` calls.
Items travel msgpack-encoded, one batch per call, and are decoded in the worker with the types of
the class's ``MapFunction[Param, In, Out]`` arguments, so a wrong input type is refused.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import importlib
import importlib.util
import inspect
import itertools
import queue
import sys
import threading
import time
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import msgspec

from .._functions import rpc
from .._worker_type import Worker
from ..rpc.functions import ENCODER, make_decoder
from ._function import MapFunction

_ENCODER = ENCODER  # the calls' codec: numpy arrays and register_type's types travel too
T = TypeVar("T")


class MapSpec(msgspec.Struct, frozen=True):
    """What a map worker needs to build the user's function object."""

    module: str
    qualname: str
    main_path: str | None
    param: bytes


class BatchResult(msgspec.Struct, frozen=True):
    """The outcome of one batch: encoded outputs of its first items, and where it failed.

    ``failed`` is the offset in the batch of the item whose ``map`` (or, folding a batch for
    a reduce, whose ``combine`` with what precedes it: ``stage``) raised (its exception is kept
    in the worker under ``token`` and re-raised by ``raise_failure`` so the caller gets the
    original type and traceback), or None. ``bad_input`` is set instead when an item did not
    decode as the function's input type. ``seconds`` is the time spent mapping.
    """

    outputs: bytes
    seconds: float
    failed: int | None = None
    token: int = 0
    bad_input: str | None = None
    stage: str = "map"


def load_main(path: str) -> Any:
    """Load the master's main script as ``__mp_main__`` (its ``if __name__ == "__main__"``
    part does not run), as the worker layer does for worker classes defined there."""
    loaded = sys.modules.get("__mp_main__")
    if loaded is not None and getattr(loaded, "__file__", None) == path:
        return loaded
    spec = importlib.util.spec_from_file_location("__mp_main__", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the main script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["__mp_main__"] = module
    spec.loader.exec_module(module)
    return module


def import_function_class(spec: MapSpec) -> type[Any]:
    module = load_main(spec.main_path) if spec.main_path else importlib.import_module(spec.module)
    target: Any = module
    for part in spec.qualname.split("."):
        target = getattr(target, part)
    return typing.cast(type[Any], target)


def type_arguments(cls: type[Any], base: type[Any]) -> tuple[Any, ...]:
    """The arguments given to ``base`` (a generic class) in ``cls``'s bases; Any for each
    one left open (a TypeVar) or not found."""
    for klass in cls.__mro__:
        for orig in getattr(klass, "__orig_bases__", ()):
            origin = typing.get_origin(orig)
            if isinstance(origin, type) and issubclass(origin, base):
                arguments = typing.get_args(orig)
                return tuple(Any if isinstance(a, typing.TypeVar) else a for a in arguments)
    return (Any, Any, Any)


class _Thread:
    """One daemon thread that runs a map worker's plain ``def`` work, one job at a time.

    Not the loop's default executor: when the master closes the worker, the process must
    exit at once, and the interpreter's shutdown waits for the default executor's threads
    (a minute-long ``map`` would hold the exit that long); a daemon thread does not.
    """

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            queue.SimpleQueue()
        )
        threading.Thread(target=self._serve, name="rpc_parallel-map", daemon=True).start()

    async def run(self, job: Callable[[], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.jobs.put((job, future))
        return await future

    def _serve(self) -> None:
        while True:
            job, future = self.jobs.get()
            try:
                outcome, failed = job(), False
            except BaseException as error:
                outcome, failed = error, True
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                future.get_loop().call_soon_threadsafe(_settle, future, outcome, failed)


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class Loaded:
    """One map's function object in a worker, with the decoders of its types. ``stopped`` is
    set when the master stops the map: batches of it still running end after their current
    item."""

    __slots__ = ("acc_decoder", "combine_is_async", "function", "in_decoder", "in_list",
                 "map_is_async", "name", "running", "stopped", "tokens")

    def __init__(self, spec: MapSpec) -> None:
        cls = import_function_class(spec)
        _, in_type, out_type = type_arguments(cls, MapFunction)
        self.name = f"{cls.__qualname__}"
        self.function = cls()
        self.in_decoder: msgspec.msgpack.Decoder[Any] = make_decoder(in_type)
        self.acc_decoder: msgspec.msgpack.Decoder[Any] = make_decoder(out_type)
        self.in_list: msgspec.msgpack.Decoder[list[Any]] = make_decoder(list[in_type])  # type: ignore[valid-type]
        self.map_is_async = inspect.iscoroutinefunction(self.function.map)
        combine = getattr(self.function, "combine", None)
        self.combine_is_async = combine is not None and inspect.iscoroutinefunction(combine)
        self.stopped = False
        # The inputs of the plain ``def`` batch running in the thread: emptied by ``stop``
        # so the C-level loop over them ends after its current item.
        self.running: list[Any] | None = None
        self.tokens: list[int] = []  # its failures kept for ``raise_failure``

    async def init(self, spec: MapSpec) -> None:
        """Await the function's ``init(param)``, if it has one."""
        init = getattr(self.function, "init", None)
        if init is not None:
            param_type = type_arguments(type(self.function), MapFunction)[0]
            param = make_decoder(param_type).decode(spec.param)
            result = init(param)
            if inspect.isawaitable(result):
                await result


class MapWorker(Worker[MapSpec | None]):
    """Serves batched ``map`` and ``combine`` calls of the user functions loaded in it.

    Each map is a ``key``: a worker spawned for one map gets its function as the init
    argument (key 0); a worker of an open ``MapPool`` starts empty and ``load``s each map's
    function as the map starts (and drops it at ``stop``).
    """

    async def init_worker_state(self, spec: MapSpec | None) -> None:
        self.loaded: dict[int, Loaded] = {}
        # Loads under way: a batch (or stop) of the map that arrives meanwhile waits for it.
        self.loading: dict[int, asyncio.Future[None]] = {}
        self.raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])
        self.failures: dict[int, BaseException] = {}
        self.lock = asyncio.Lock()
        self.thread = _Thread()
        self.next_token = 0
        if spec is not None:
            await self._load(0, spec)

    async def _load(self, key: int, spec: MapSpec) -> None:
        loaded = Loaded(spec)
        await loaded.init(spec)
        self.loaded[key] = loaded

    @rpc
    async def load(self, key: int, spec: MapSpec) -> None:
        """Build map ``key``'s function object and run its ``init(param)``. The master does
        not wait for this before sending the map's batches: they wait here for it."""
        loading: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.loading[key] = loading  # (before any await: calls start in the order sent)
        try:
            async with self.lock:  # not while a batch (of another map on the pool) runs
                await self._load(key, spec)
        finally:
            del self.loading[key]
            loading.set_result(None)

    async def _loaded(self, key: int) -> Loaded:
        """Map ``key``'s function, once its load (if under way) is done."""
        loading = self.loading.get(key)
        if loading is not None:
            await loading
        return self._function(key)

    @rpc
    async def stop(self, key: int) -> None:
        """Drop map ``key``: its batches still queued here are refused, the running one
        ends after its current item."""
        loading = self.loading.get(key)
        if loading is not None:
            await loading
        loaded = self.loaded.pop(key, None)
        if loaded is not None:
            loaded.stopped = True
            if loaded.running is not None:
                loaded.running.clear()  # (under the GIL: the loop over it sees it at once)
            for token in loaded.tokens:  # failures nobody will ask for now
                self.failures.pop(token, None)

    def _function(self, key: int) -> Loaded:
        loaded = self.loaded.get(key)
        if loaded is None:
            raise LookupError(f"map {key} is not loaded in this worker (stopped or never loaded)")
        return loaded

    @rpc
    async def map_batch(self, key: int, payload: bytes, reduce: bool) -> BatchResult:
        """Map every item of the batch (in order); with ``reduce``, fold the outputs with
        ``combine`` (neighbours only) and return the one accumulator."""
        loaded = self.loaded.get(key) or await self._loaded(key)
        async with self.lock:  # one batch at a time: they may share a function object
            if loaded.stopped:
                return BatchResult(b"", 0.0)
            if loaded.map_is_async:
                try:
                    items = loaded.in_list.decode(payload)
                except msgspec.ValidationError:
                    return self._find_bad_input(loaded, payload)
                return await self._map_async(loaded, items, reduce)
            # A plain def batch is decoded in the thread, just before it is mapped: the
            # loop's thread stays free meanwhile, and a batch waiting its turn is kept as
            # its (smaller) encoding.
            return await self.thread.run(lambda: self._map_sync(loaded, payload, reduce))

    def _find_bad_input(self, loaded: Loaded, payload: bytes) -> BatchResult:
        """The batch did not decode as ``list[In]``: name the first input that does not."""
        for offset, raw in enumerate(self.raw_list.decode(payload)):
            try:
                loaded.in_decoder.decode(raw)
            except msgspec.ValidationError as error:
                return BatchResult(b"", 0.0, failed=offset, bad_input=str(error))
        raise ValueError("a batch of inputs did not decode, but each of its inputs does")

    async def _map_async(self, loaded: Loaded, items: list[Any], reduce: bool) -> BatchResult:
        start = time.perf_counter()
        outputs: list[Any] = []
        acc: Any = None
        function = loaded.function
        for offset, x in enumerate(items):
            if loaded.stopped:
                break
            try:
                y = await function.map(x)
            except Exception as error:
                return self._failed(loaded, offset, error, start, "map")
            if not reduce:
                outputs.append(y)
                continue
            try:
                acc = y if offset == 0 else await _combine_async(function, acc, y)
            except Exception as error:
                return self._failed(loaded, offset, error, start, "combine")
        return self._done(outputs, acc, reduce, start)

    def _map_sync(self, loaded: Loaded, payload: bytes, reduce: bool) -> BatchResult:
        try:
            items = loaded.in_list.decode(payload)
        except msgspec.ValidationError:
            return self._find_bad_input(loaded, payload)
        if not reduce:
            return self._map_sync_list(loaded, items)
        start = time.perf_counter()
        outputs: list[Any] = []
        acc: Any = None
        function = loaded.function
        for offset, x in enumerate(items):
            if loaded.stopped:
                break
            try:
                y = function.map(x)
            except Exception as error:
                return self._failed(loaded, offset, error, start, "map")
            if not reduce:
                outputs.append(y)
                continue
            try:
                acc = y if offset == 0 else function.combine(acc, y)
            except Exception as error:
                return self._failed(loaded, offset, error, start, "combine")
        return self._done(outputs, acc, reduce, start)

    def _map_sync_list(self, loaded: Loaded, items: list[Any]) -> BatchResult:
        """A plain ``def`` map without reduce: the per-item loop runs in C (``list.extend``
        over ``map``, calling the class's function with the instance so no bound method is
        made per call). ``stop`` empties ``items`` (``loaded.running``), which ends the loop
        after the current item. ``extend`` keeps what was appended before an item raised:
        its offset."""
        start = time.perf_counter()
        outputs: list[Any] = []
        function, instances = _unbound(loaded.function)
        loaded.running = items
        try:
            if not loaded.stopped:
                outputs.extend(builtins.map(function, *instances, items))
        except Exception as error:
            return self._failed(loaded, len(outputs), error, start, "map")
        finally:
            loaded.running = None
        return self._done(outputs, None, False, start)

    def _done(self, outputs: list[Any], acc: Any, reduce: bool, start: float) -> BatchResult:
        encoded = _ENCODER.encode(acc if reduce else outputs)
        return BatchResult(encoded, time.perf_counter() - start)

    def _failed(self, loaded: Loaded, offset: int, error: BaseException, start: float,
                stage: str) -> BatchResult:
        self.next_token += 1
        self.failures[self.next_token] = error
        loaded.tokens.append(self.next_token)
        return BatchResult(b"", time.perf_counter() - start, failed=offset,
                           token=self.next_token, stage=stage)

    @rpc
    async def raise_failure(self, token: int) -> None:
        """Re-raise the exception kept for ``token``, so the caller's RemoteError carries the
        original type, message and traceback."""
        error = self.failures.pop(token)
        raise error

    @rpc
    async def combine(self, key: int, a: bytes, b: bytes) -> bytes:
        """``combine(a, b)`` of two encoded accumulators of map ``key`` (a first: order is
        kept)."""
        loaded = self.loaded.get(key) or await self._loaded(key)
        left, right = loaded.acc_decoder.decode(a), loaded.acc_decoder.decode(b)
        function = loaded.function
        if loaded.combine_is_async:
            result = await function.combine(left, right)
        else:
            result = await self.thread.run(lambda: function.combine(left, right))
        return _ENCODER.encode(result)


def _unbound(function: Any) -> tuple[Callable[..., Any], tuple[Iterable[Any], ...]]:
    """``function.map`` as what ``builtins.map`` calls fastest: the class's plain function
    with the instance repeated (a bound method costs about 5% more per call), or the
    attribute itself when it is not a method bound to ``function`` (a staticmethod, say)."""
    bound = function.map
    if isinstance(bound, types.MethodType) and bound.__self__ is function:
        return bound.__func__, (itertools.repeat(function),)
    return bound, ()


async def _combine_async(function: Any, a: Any, b: Any) -> Any:
    result = function.combine(a, b)
    return await result if inspect.isawaitable(result) else result
