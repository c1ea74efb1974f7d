"""The map engine: reads inputs lazily, batches them, keeps every worker busy, retries the
items of a worker that died, and yields each batch's encoded outputs as it completes.

Memory is bounded: an input is read only when a worker has room for another batch (each worker
has at most ``depth()`` batches in flight) and, for ordered results, only within a window ahead of
the consumer. Batch sizes follow the measured cost of an item so one batch takes about
``TARGET_SECONDS`` of worker time; an item whose encoding is ``LARGE_ITEM`` bytes or more
travels alone. See docs/decisions/0012-map-reduce-batching.md.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import struct
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable
from typing import Any

from .._handle import WorkerHandle
from ..errors import ConnectionClosed, ProtocolError, RemoteError, WorkerDied
from ..rpc.functions import ENCODER
from ._map_pool import MapPool
from ._map_worker import BatchResult, MapWorker

DEPTH = 2
"""Batches in flight per worker, at least: one running, one waiting in the worker, so a worker
never idles for a round trip."""
MAX_DEPTH = 8
"""Batches in flight per worker, at most: batches of tiny items (``MAX_BATCH`` of them take far
less than ``TARGET_SECONDS``) are queued deeper, so a worker has about ``TARGET_SECONDS`` of work
queued and does not idle while the master (busy, or not scheduled) is slow to send more."""
TARGET_SECONDS = 0.02
MAX_BATCH = 8192
RAMP = 256
"""Batches of tiny items start this small and double (each batch holds at most as many items
as were sent before it) up to their target size: the first outputs come back, and the master
starts handing them out, after a short batch rather than a full one."""
MAX_BATCH_BYTES = 1 << 20
LARGE_ITEM = 64 << 10

_ENCODER = ENCODER  # the calls' codec: numpy arrays and register_type's types travel too


def array_header(n: int) -> bytes:
    """The msgpack header of an array of ``n`` elements (batches are joined by hand)."""
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


class Batch:
    """Consecutive inputs ``start .. start + len(items) - 1`` and their encoding (one msgpack
    array: what ``map_batch`` receives)."""

    __slots__ = ("attempts", "items", "payload", "sent", "start")

    def __init__(self, start: int, items: list[Any], payload: bytes) -> None:
        self.start = start
        self.items = items
        self.payload = payload
        self.attempts = 0
        self.sent = 0  # when it was last sent (a counter): a worker maps in that order

    def describe(self) -> str:
        if len(self.items) == 1:
            return f"input {self.start}"
        return f"one of inputs {self.start}..{self.start + len(self.items) - 1}"

    def single(self, offset: int) -> Batch:
        """A batch of this one's item ``offset`` alone (to retry it by itself)."""
        item = self.items[offset]
        return Batch(self.start + offset, [item], _ENCODER.encode([item]))


class Inputs:
    """An iterable or async iterable, read lazily (only as far as asked) and encoded."""

    def __init__(self, inputs: Iterable[Any] | AsyncIterable[Any], function: str) -> None:
        # A list or tuple is sliced (one C-level copy per batch); any other iterable is read
        # through its iterator.
        self._sequence = inputs if isinstance(inputs, list | tuple) else None
        self._sync = iter(inputs) if not isinstance(inputs, AsyncIterable) else None
        self._async = aiter(inputs) if isinstance(inputs, AsyncIterable) else None
        self._pending: list[Any] = []  # read, not yet in a batch (the rest of a cut batch)
        self._function = function
        self.read = 0  # how many inputs have been read from the source
        self.exhausted = False

    @property
    def position(self) -> int:
        """The index of the next input a batch will start with."""
        return self.read - len(self._pending)

    async def _read(self, count: int) -> list[Any]:
        """Up to ``count`` more inputs from the source."""
        sequence = self._sequence
        if sequence is not None:
            values = sequence[self.read:self.read + count]  # a list's slice is a new list
            if not isinstance(values, list):
                values = list(values)
        elif self._sync is not None:
            values = list(itertools.islice(self._sync, count))
        else:
            assert self._async is not None
            values = []
            for _ in range(count):
                try:
                    values.append(await anext(self._async))
                except StopAsyncIteration:
                    break
        if len(values) < count:
            self.exhausted = True
        self.read += len(values)
        return values

    async def take(self, count: int, limit: int) -> Batch | None:
        """The next batch: up to ``count`` inputs, none at or beyond index ``limit``, at most
        ``MAX_BATCH_BYTES``; an input of ``LARGE_ITEM`` bytes or more travels alone."""
        start = self.position
        count = min(count, limit - start)
        if count <= 0 or (self.exhausted and not self._pending):
            return None
        if not self._pending:
            items = await self._read(count)  # the common case: no copy
        else:
            if len(self._pending) < count and not self.exhausted:
                self._pending += await self._read(count - len(self._pending))
            items = self._pending[:count]
            del self._pending[:count]
        if not items:
            return None
        try:
            payload = _ENCODER.encode(items)  # the common case: one call for the batch
        except TypeError:
            self._refuse(start, items)
            raise
        if len(payload) >= LARGE_ITEM:  # it may hold a large item, or be too large itself
            kept, payload = self._cut(start, items)
            self._pending[:0] = items[len(kept):]  # the rest starts the next batch
            items = kept
        return Batch(start, items, payload)

    def _cut(self, start: int, items: list[Any]) -> tuple[list[Any], bytes]:
        """A head of ``items`` within ``MAX_BATCH_BYTES`` that has no large item, or the first
        item alone when it is large; with its encoding. Runs of items are encoded together,
        halved only while they are ``LARGE_ITEM`` bytes or more, so a batch of many small
        items (say 8,192 words) costs a few C-level encodes, not one Python call per item.
        The head may stop up to ``LARGE_ITEM`` bytes short of ``MAX_BATCH_BYTES``."""
        bodies: list[bytes] = []  # the items' encodings, a run at a time
        total = taken = 0
        runs = [items]  # a stack: the next run is last
        while runs:
            run = runs.pop()
            body = _ENCODER.encode(run)[len(array_header(len(run))):]
            if len(run) > 1 and len(body) >= LARGE_ITEM:
                half = len(run) // 2
                runs += (run[half:], run[:half])
                continue
            large = len(body) >= LARGE_ITEM  # (a run of one item)
            if taken and (large or total + len(body) > MAX_BATCH_BYTES):
                break
            bodies.append(body)
            total += len(body)
            taken += len(run)
            if large:
                break
        return items[:taken], array_header(taken) + b"".join(bodies)

    def _refuse(self, start: int, items: list[Any]) -> None:
        """Raise ``ProtocolError`` naming the first of ``items`` that cannot be encoded."""
        for offset, x in enumerate(items):
            try:
                _ENCODER.encode(x)
            except TypeError as error:
                raise ProtocolError(
                    f"{self._function}: input {start + offset} cannot be encoded: {error}"
                ) from None


def forget(future: asyncio.Future[Any]) -> None:
    """Drop a call's future: cancel it, and never warn about its exception (the call's
    outcome no longer matters: it is being resent, or the map is over)."""
    if future.done():
        if not future.cancelled():
            future.exception()
    else:
        future.cancel()
        future.add_done_callback(lambda f: f.cancelled() or f.exception())


class Engine:
    """Runs batches of one map over a pool of ``MapWorker``; see the module docstring."""

    def __init__(self, pool: MapPool, inputs: Inputs, *, function: str,
                 retries: int, reduce: bool,
                 window: Callable[[], int | None] | None = None) -> None:
        self.pool = pool
        self.key = 0  # the map's key in the pool's workers (set once it is loaded)
        # Loads of the map's function into the pool's workers, not yet answered.
        self.loads: dict[asyncio.Future[None], WorkerHandle[MapWorker]] = {}
        self.inputs = inputs
        self.function = function
        self.retries = retries
        self.reduce = reduce
        self.window = window
        self.ramp = True  # batches of tiny items ramp up to their size (``RAMP``)
        self.cost: float | None = None  # seconds per item, measured by the workers
        self.retry: collections.deque[Batch] = collections.deque()
        self.flight: dict[asyncio.Future[BatchResult], tuple[Batch, WorkerHandle[MapWorker]]] = {}
        self.queues: dict[int, collections.deque[Batch]] = {}
        self.sent = 0

    def target_size(self) -> int:
        """Items per batch for about ``TARGET_SECONDS`` of work (1 until a cost is known)."""
        if self.cost is None:
            return 1
        return max(1, min(MAX_BATCH, int(TARGET_SECONDS / max(self.cost, 1e-7))))

    def batch_size(self) -> int:
        """The next batch's size: the target, ramped up to (``RAMP``) unless ``ramp`` is off
        (the outputs are all taken at the end: no first output to hurry)."""
        if not self.ramp:
            return self.target_size()
        return min(self.target_size(), max(RAMP, self.inputs.position))

    def depth(self) -> int:
        """Batches in flight per worker: enough for about ``TARGET_SECONDS`` of work, between
        ``DEPTH`` and ``MAX_DEPTH``."""
        if self.cost is None:
            return DEPTH
        per_batch = self.cost * self.target_size()
        return max(DEPTH, min(MAX_DEPTH, math.ceil(TARGET_SECONDS / max(per_batch, 1e-9))))

    def window_size(self) -> int:
        """How far ahead of the consumer ordered results may be computed: twice what the
        workers can hold in flight, so a slow input at the head keeps them busy a while
        without letting the reading run away."""
        return max(64, 2 * self.depth() * max(1, len(self.pool)) * self.target_size())

    async def run(self) -> AsyncGenerator[tuple[Batch, BatchResult], None]:
        """Yields ``(batch, result)`` of each batch as it completes (completion order; those
        completing together in the order they were sent). The workers are sent more batches
        before the results are handed out, so they do not wait for the consumer."""
        while True:
            self.pool._adopt_spawned()  # workers still starting join as they come up
            await self._dispatch()
            joining = self.pool._spawning
            if not self.flight and not joining and not self.loads:
                return  # (a map done before every worker is up waits for them: a failed
                # spawn is raised, as it is when it fails first; so for the loads)
            waits: set[asyncio.Future[Any]] = {*self.flight, *joining, *self.loads}
            ended, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            self._loaded([f for f in self.loads if f in ended])
            done = [f for f in self.flight if f in ended]
            ready: list[tuple[Batch, BatchResult]] = []
            for future in sorted(done, key=lambda f: self.flight[f][0].sent):
                if future not in self.flight:
                    continue  # resent already: its worker died while handling another
                batch, handle = self.flight.pop(future)
                queue = self._queue(handle)
                running = list(queue)
                queue.remove(batch)
                error = future.exception()
                if error is None:
                    result = future.result()
                    self._measure(batch, result)
                    if result.failed is None:
                        ready.append((batch, result))
                        continue
                for item in ready:  # what completed before a failure is handed out first
                    yield item
                ready.clear()
                if error is None:
                    await self._raise_failure(batch, future.result(), handle)
                elif isinstance(error, WorkerDied):
                    await self._worker_died(handle, running, error)
                else:
                    raise error
            if ready:
                self.pool._adopt_spawned()
                await self._dispatch()
                for item in ready:
                    yield item

    def _loaded(self, loads: list[asyncio.Future[None]]) -> None:
        """Take in answered loads, raising one that failed (the function's ``init`` raised,
        or it cannot be imported). A worker answers a load before any batch of the map, so
        this comes first. A worker that died meanwhile is left to its batches' retries."""
        for future in loads:
            del self.loads[future]
            error = future.exception()
            if error is not None and not isinstance(error, ConnectionClosed):
                raise self.pool.load_error(error, self.function)

    def _queue(self, handle: WorkerHandle[MapWorker]) -> collections.deque[Batch]:
        return self.queues.setdefault(id(handle), collections.deque())

    async def _dispatch(self) -> None:
        """Send batches while some worker has room (retries first, then new inputs)."""
        depth = self.depth()
        workers = self.pool.workers
        while workers:
            handle = min(workers, key=lambda h: len(self._queue(h)))
            if len(self._queue(handle)) >= depth:
                return
            batch = self.retry.popleft() if self.retry else await self._next_batch()
            if batch is None:
                return
            self.sent += 1
            batch.sent = self.sent
            future = handle.submit(MapWorker.map_batch, self.key, batch.payload, self.reduce)
            self.flight[future] = (batch, handle)
            self._queue(handle).append(batch)

    async def _next_batch(self) -> Batch | None:
        limit = self.window() if self.window is not None else None
        return await self.inputs.take(self.batch_size(), limit if limit is not None else 1 << 62)

    def _measure(self, batch: Batch, result: BatchResult) -> None:
        done = len(batch.items) if result.failed is None else result.failed + 1
        per_item = result.seconds / max(1, done)
        self.cost = per_item if self.cost is None else 0.7 * self.cost + 0.3 * per_item

    async def _raise_failure(self, batch: Batch, result: BatchResult,
                             handle: WorkerHandle[MapWorker]) -> None:
        """Raise what made input ``batch.start + result.failed`` fail, with its ``index``."""
        assert result.failed is not None
        index = batch.start + result.failed
        if result.bad_input is not None:
            refused = ProtocolError(
                f"{self.function}: input {index} is not of the function's input type: "
                f"{result.bad_input}"
            )
            refused.index = index  # type: ignore[attr-defined]
            raise refused
        try:
            await handle.run(MapWorker.raise_failure, result.token)
        except RemoteError as error:
            # Name the user's function, not the worker's ``raise_failure``.
            error.function = f"{self.function}.{result.stage}"
            error.args = (f"{error.function} raised {error.remote_type}: "
                          f"{error.remote_message}",)
            error.index = index  # type: ignore[attr-defined]
            error.add_note(f"rpc_parallel.map_reduce: raised for input {index}")
            raise
        raise ProtocolError(f"{self.function}: input {index} failed, error lost")

    async def _worker_died(self, handle: WorkerHandle[MapWorker],
                           running: list[Batch], error: WorkerDied) -> None:
        """``running`` are the dead worker's batches in the order they were sent. Those that
        finished before it died are taken as usual. Of the others, the first was being mapped
        (a worker maps one batch at a time): it is charged an attempt and retried item by item
        (a second death then names the exact input); the rest only waited behind it and are
        resent unchanged. The worker is replaced."""
        futures = {id(b): f for f, (b, owner) in self.flight.items() if owner is handle}
        lost = []
        for batch in running:
            future = futures.get(id(batch))
            if future is not None and future.done() and not future.cancelled() \
                    and future.exception() is None:
                continue
            if future is not None:
                forget(future)
                del self.flight[future]
                self._queue(handle).remove(batch)
            lost.append(batch)
        suspect, waiting = lost[0], lost[1:]
        self.retry.extend(waiting)
        suspect.attempts += 1
        if suspect.attempts > self.retries:
            died = WorkerDied(
                f"{self.function}: {suspect.describe()}: the worker died "
                f"{suspect.attempts} time(s) (retries={self.retries}): {error.reason}",
                worker=error.worker, function=self.function, exit_code=error.exit_code,
                signal=error.signal, stderr_tail=error.stderr_tail,
            )
            died.index = suspect.start  # type: ignore[attr-defined]
            died.indices = range(suspect.start, suspect.start + len(suspect.items))  # type: ignore[attr-defined]
            raise died
        for offset in range(len(suspect.items)):
            single = suspect.single(offset)
            single.attempts = suspect.attempts
            self.retry.append(single)
        self.retry = collections.deque(sorted(self.retry, key=lambda b: b.start))
        await self.pool._replace(handle)

    async def close(self) -> None:
        futures: list[asyncio.Future[Any]] = [*self.flight, *self.loads]
        for future in futures:
            forget(future)
        self.flight.clear()
        self.loads.clear()
        # The input is the caller's: left as it is (not closed), read up to where it was.
