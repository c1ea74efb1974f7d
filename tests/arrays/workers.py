"""A worker that takes and returns numpy arrays and scalars (importable: no start_app)."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

import rpc_parallel as rp


class Pair(msgspec.Struct):
    """Arrays inside a struct travel the same way."""

    label: str
    values: npt.NDArray[np.int32]


class Arrays(rp.Worker[None]):
    @rp.rpc
    async def echo(self, a: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
        return a

    @rp.rpc
    async def echo_f64(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return a

    @rp.rpc
    async def describe(self, a: np.ndarray) -> tuple[str, list[int], bool, bool]:  # type: ignore[type-arg]
        """dtype, shape, Fortran order and writability as the worker received them."""
        return (a.dtype.str, list(a.shape), bool(a.flags.f_contiguous and not a.flags.c_contiguous),
                bool(a.flags.writeable))

    @rp.rpc
    async def floating(self, a: npt.NDArray[np.floating[Any]]) -> str:
        return a.dtype.name

    @rp.rpc
    async def total(self, a: npt.NDArray[np.float64]) -> np.float64:
        return a.sum()

    @rp.rpc
    async def wrong_result(self) -> npt.NDArray[np.float64]:
        return np.arange(3, dtype=np.int32)  # type: ignore[return-value]

    @rp.rpc
    async def objects(self) -> np.ndarray:  # type: ignore[type-arg]
        return np.array([object()], dtype=object)

    @rp.rpc
    async def scalars(self, i: np.int16, f: np.float32, b: np.bool_, c: np.complex128
                      ) -> tuple[np.int16, np.float32, np.bool_, np.complex128, str]:
        return i, f, b, c, ",".join(type(v).__name__ for v in (i, f, b, c))

    @rp.rpc
    async def as_int(self, x: int) -> int:
        return x

    @rp.rpc
    async def pair(self, p: Pair) -> Pair:
        return Pair(p.label + "!", p.values * 2)

    @rp.rpc
    async def anything(self, x: Any) -> Any:
        return x

    @rp.rpc
    async def unsendable_after_array(self, n: int) -> Any:
        """A result whose first part lends a segment and whose second cannot be encoded."""
        return [np.ones(n), object()]

    @rp.rpc
    async def filled(self, n: int, value: float) -> npt.NDArray[np.float64]:
        return np.full(n, value)

    async def init_worker_state(self, _: None) -> None:
        self.sent = 0

    @rp.pipe
    async def blocks(self, n: int, count: int) -> AsyncIterator[npt.NDArray[np.float64]]:
        for i in range(count):
            self.sent = i + 1
            yield np.full(n, float(i))

    @rp.rpc
    async def yielded(self) -> int:
        """How many items ``blocks`` has produced so far."""
        return self.sent

    @rp.rpc
    async def hold(self, a: npt.NDArray[np.float64]) -> None:
        """Never returns (the test kills or cancels it)."""
        await asyncio.Event().wait()

    @rp.rpc
    async def big_then_hang(self, n: int) -> npt.NDArray[np.float64]:
        """Answers after its caller has given up: the answer's segment is not taken."""
        await asyncio.sleep(0.5)
        return np.ones(n)

    @rp.rpc
    async def collect(self) -> int:
        """Runs the worker's garbage collector (a cancelled call's arguments sit in a
        reference cycle with its CancelledError until it runs)."""
        return gc.collect()

    @rp.rpc
    async def pid(self) -> int:
        return os.getpid()

    @rp.rpc
    async def stall(self, seconds: float) -> None:
        """Blocks the worker's event loop (nothing it receives is read meanwhile)."""
        time.sleep(seconds)  # noqa: ASYNC251 - on purpose


class Shift(rp.MapFunction[npt.NDArray[np.float64], npt.NDArray[np.float64],
                           npt.NDArray[np.float64]]):
    """A map over arrays whose ``param`` is an array too (``rp.map_reduce`` tests)."""

    def init(self, param: npt.NDArray[np.float64]) -> None:
        self.offset = param

    def map(self, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return x + self.offset


class Norm(rp.MapFunction[None, npt.NDArray[np.float64], np.float64]):
    async def map(self, x: npt.NDArray[np.float64]) -> np.float64:
        return np.float64(np.sqrt((x * x).sum()))


class Stack(rp.MapReduceFunction[None, npt.NDArray[np.int64], npt.NDArray[np.int64]]):
    """Non-commutative: concatenation keeps input order only if only neighbours combine."""

    def map(self, x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return x

    def combine(self, a: npt.NDArray[np.int64], b: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.concatenate([a, b])
