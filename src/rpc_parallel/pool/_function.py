"""The classes users subclass to describe map work (re-exported by ``rp.map_reduce``)."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Generic, TypeVar

Param = TypeVar("Param")
In = TypeVar("In")
Out = TypeVar("Out")
Acc = TypeVar("Acc")


class MapFunction(Generic[Param, In, Out]):
    """What to compute for each input: subclass with ``map`` (and optionally ``init``).

    One instance lives in each worker: ``init(param)`` runs once there, then ``map(x)`` for
    each input. Both may be ``async def`` (run on the worker's event loop) or plain ``def``
    (run in a thread of the worker, so heartbeats go on while the CPU is busy). The class must
    be defined at module top level so workers can import it.
    """

    def init(self, param: Param) -> Awaitable[None] | None:
        """Runs once per worker with the map's ``param`` (optional)."""
        return None

    def map(self, x: In) -> Out | Awaitable[Out]:
        """The output for one input."""
        raise NotImplementedError(f"{type(self).__qualname__} must define map(self, x)")


class MapReduceFunction(MapFunction[Param, In, Acc]):
    """A ``MapFunction`` whose outputs are accumulators, with ``combine(a, b)`` to merge two.

    ``map_reduce`` only combines neighbours (``a`` covers inputs before ``b``'s), so
    ``combine`` need only be associative; ``map_reduce_commutative`` may combine any two.
    """

    def combine(self, a: Acc, b: Acc) -> Acc | Awaitable[Acc]:
        """Merge two accumulators; ``a`` comes first."""
        raise NotImplementedError(f"{type(self).__qualname__} must define combine(self, a, b)")
