"""The Python floor: raw asyncio (uvloop when installed) + msgspec, length-prefixed frames.

Each worker is a fresh interpreter on one end of a Unix socketpair. No types checked, no
handshake, no heartbeats: a lower bound for what an RPC layer in Python can reach.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar

from .base import AsyncPeer, check, check_map
from .floor_proto import OP_ECHO, OP_INC, OP_MAP, FrameProtocol

MAP_BATCH = 1024


class _Client(FrameProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0

    def call(self, op: int, value: object) -> asyncio.Future[Any]:
        self.next_id += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        self.send((self.next_id, op, value))
        return fut

    def message(self, msg: Any) -> None:
        msg_id, value = msg
        self.pending.pop(msg_id).set_result(value)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("floor worker went away"))
        self.pending.clear()


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process, client: _Client) -> None:
        self.proc = proc
        self.client = client

    @classmethod
    async def spawn(cls) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "benchmarks.peers.adapters.floor_worker",
                str(theirs.fileno()),
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        _, client = await asyncio.get_running_loop().connect_accepted_socket(_Client, ours)
        return cls(proc, client)

    async def close(self) -> None:
        if self.client.transport is not None:
            self.client.transport.close()
        await self.proc.wait()


class FloorPeer(AsyncPeer):
    key = "floor_asyncio"
    label = "floor: asyncio+msgspec"
    notes: ClassVar[dict[str, str]] = {
        "spawn": "fresh interpreter on a socketpair + first reply",
        "map": f"batches of {MAP_BATCH} items per message, all in flight over 2 workers",
    }

    def __init__(self) -> None:
        self.workers: list[_Worker] = []

    def version(self) -> str | None:
        try:
            import uvloop
        except ImportError:
            return "asyncio (no uvloop)"
        return f"uvloop {getattr(uvloop, '__version__', '?')}"

    async def spawn_first(self) -> float:
        t0 = time.perf_counter()
        w = await _Worker.spawn()
        r = await w.client.call(OP_INC, 1)
        dt = time.perf_counter() - t0
        await w.close()
        check(r == 2, "inc(1)")
        return dt

    async def setup(self, workers: int) -> None:
        self.workers = list(await asyncio.gather(*(_Worker.spawn() for _ in range(workers))))
        await asyncio.gather(*(w.client.call(OP_INC, 0) for w in self.workers))

    async def latency(self, n: int) -> list[float]:
        client = self.workers[0].client
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            r = await client.call(OP_INC, i)
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    async def inflight(self, n: int) -> float:
        clients = [w.client for w in self.workers]
        k = len(clients)
        t0 = time.perf_counter()
        results = await asyncio.gather(*(clients[i % k].call(OP_INC, i) for i in range(n)))
        dt = time.perf_counter() - t0
        check(results[-1] == n, "inc")
        return dt

    async def echo(self, payload: bytes) -> float:
        client = self.workers[0].client
        t0 = time.perf_counter()
        r = await client.call(OP_ECHO, payload)
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    async def map(self, items: list[int]) -> float:
        clients = [w.client for w in self.workers]
        k = len(clients)
        t0 = time.perf_counter()
        batches = [items[i : i + MAP_BATCH] for i in range(0, len(items), MAP_BATCH)]
        parts = await asyncio.gather(
            *(clients[j % k].call(OP_MAP, b) for j, b in enumerate(batches))
        )
        out = [x for part in parts for x in part]
        dt = time.perf_counter() - t0
        check_map(items, out)
        return dt

    async def teardown(self) -> None:
        await asyncio.gather(*(w.close() for w in self.workers))
        self.workers = []

    @staticmethod
    def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            import uvloop
        except ImportError:
            asyncio.run(main())
        else:
            uvloop.run(main())


PEER = FloorPeer
