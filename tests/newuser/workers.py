"""Worker classes of the kind a new user writes first (#11), in an importable module."""

from __future__ import annotations

import asyncio
import datetime
import os
import sys
import threading
import time

import rpc_parallel as rp


class InsufficientFunds(Exception):
    """A user's own exception class, importable in the master."""

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(needed, available)
        self.needed = needed
        self.available = available


class Bank(rp.Worker[int]):
    async def init_worker_state(self, balance: int) -> None:
        self.balance = balance
        self.active = 0
        self.most_active = 0
        self.lock = threading.Lock()
        self.log: list[int] = []

    @rp.rpc
    async def withdraw(self, amount: int) -> int:
        if amount > self.balance:
            raise InsufficientFunds(amount, self.balance)
        self.balance -= amount
        return self.balance

    @rp.rpc
    async def lookup(self, key: str) -> int:
        return {"a": 1}[key]

    @rp.rpc
    async def local_error(self) -> None:
        """Raises an exception whose class exists only in the worker."""
        local = type("OnlyInTheWorker", (Exception,), {"__module__": "worker_only_module"})
        raise local("cannot be rebuilt in the master")

    @rp.rpc
    async def exit_with(self, code: int) -> None:
        sys.exit(code)

    @rp.rpc
    def busy(self, seconds: float) -> int:
        """A plain def that records how many calls of it run at once on this worker."""
        with self.lock:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(seconds)
        with self.lock:
            self.active -= 1
        return self.most_active

    @rp.rpc
    async def concurrency(self) -> int:
        return self.most_active

    @rp.one_way
    async def put(self, x: int) -> None:
        self.log.append(x)

    @rp.rpc
    async def put_via_self(self) -> list[int]:
        """Calls this worker's own decorated function as a plain method."""
        await self.put(1)
        await self.put(2)
        return self.log

    @rp.rpc
    async def echo_time(self, when: datetime.datetime) -> datetime.datetime:
        return when

    @rp.rpc
    async def echo_float(self, x: float) -> float:
        return x

    @rp.rpc
    async def echo_int(self, x: int) -> int:
        return x

    @rp.rpc
    async def pid(self) -> int:
        return os.getpid()

    @rp.rpc
    async def argv(self) -> list[str]:
        return sys.argv


class SlowInit(rp.Worker[float]):
    async def init_worker_state(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @rp.rpc
    async def ping(self) -> str:
        return "pong"


class InitRaises(rp.Worker[str]):
    async def init_worker_state(self, message: str) -> None:
        raise ValueError(message)

    @rp.rpc
    async def ping(self) -> str:
        return "pong"


class RayStyle(rp.Worker[int]):
    """The way Ray actors take their argument: in ``__init__`` (this library: init_worker_state)."""

    def __init__(self, offset: int) -> None:
        self.offset = offset

    @rp.rpc
    async def get(self) -> int:
        return self.offset


class InitMethodRaises(rp.Worker[None]):
    """A worker whose ``__init__`` raises."""

    def __init__(self) -> None:
        raise ValueError("__init__ broke")

    @rp.rpc
    async def ping(self) -> str:
        return "pong"


class Printer(rp.Worker[None]):
    """Writes raw bytes to its stdout or stderr (no encoding, no buffering in between)."""

    @rp.rpc
    async def emit(self, data: bytes, fd: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
