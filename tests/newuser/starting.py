"""Worker classes for the start-up tests of #11 (init phases, plain-def init, sendable types)."""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time
from typing import Any

import rpc_parallel as rp
from rpc_parallel.rpc import register_type


class BlockingInit(rp.Worker[float]):
    """A plain-def ``init_worker_state`` that blocks the worker's loop (heavy loading)."""

    def init_worker_state(self, seconds: float) -> None:
        time.sleep(seconds)
        self.loaded = seconds

    @rp.rpc
    async def loaded_for(self) -> float:
        return self.loaded


class ExitsInInit(rp.Worker[int]):
    async def init_worker_state(self, code: int) -> None:
        os._exit(code)

    @rp.rpc
    async def ping(self) -> str:
        return "pong"


class Opaque:
    """A class msgspec cannot encode, and nobody taught it."""


@dataclasses.dataclass
class Sendable:
    """A dataclass of sendable fields."""

    name: str
    tags: set[str]


@dataclasses.dataclass
class HoldsOpaque:
    thing: Opaque


class Registered:
    """Taught to the codecs with ``register_type`` (so it may be declared)."""

    def __init__(self, value: int) -> None:
        self.value = value


register_type(Registered, lambda registered: registered.value, Registered)


class Echoes(rp.Worker[None]):
    @rp.rpc
    async def registered(self, value: Registered) -> int:
        return value.value

    @rp.rpc
    async def anything(self, value: Any) -> Any:
        return value

    @rp.rpc
    async def when(self, value: datetime.datetime) -> datetime.datetime:
        return value


class Leaves(rp.Worker[None]):
    @rp.rpc
    def leave(self, status: int | str | None) -> None:
        """A plain def (it runs in a thread) that ends the worker."""
        sys.exit(status)
