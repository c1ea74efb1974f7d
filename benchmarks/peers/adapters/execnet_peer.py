"""execnet: popen gateways running a small echo loop over a channel."""

from __future__ import annotations

import sys
import time
from typing import Any, ClassVar

import execnet

from .base import SpreadPeer, check

# Runs inside the gateway: an int comes back incremented, anything else comes back as sent.
_WORKER_SOURCE = """
while True:
    item = channel.receive()
    if item is None:
        break
    channel.send(item + 1 if isinstance(item, int) else item)
"""


class _Worker:
    def __init__(self) -> None:
        self.gateway: Any = execnet.makegateway(f"popen//python={sys.executable}")
        self.channel: Any = self.gateway.remote_exec(_WORKER_SOURCE)

    def close(self) -> None:
        self.channel.send(None)
        self.channel.waitclose(10)
        self.gateway.exit()


class ExecnetPeer(SpreadPeer):
    key = "execnet"
    label = "execnet"
    notes: ClassVar[dict[str, str]] = {
        "spawn": "makegateway('popen') + remote_exec + first send/receive",
        "inflight": "all sends first, then all receives, over 2 channels",
        "map": "one message per item, pipelined over 2 channels (execnet has no map)",
    }

    def __init__(self) -> None:
        self.workers: list[_Worker] = []

    def version(self) -> str | None:
        return str(execnet.__version__)

    def spawn_first(self) -> float:
        t0 = time.perf_counter()
        w = _Worker()
        w.channel.send(1)
        r = w.channel.receive()
        dt = time.perf_counter() - t0
        w.close()
        check(r == 2, "inc(1)")
        return dt

    def setup(self, workers: int) -> None:
        self.workers = [_Worker() for _ in range(workers)]
        for w in self.workers:
            w.channel.send(0)
            w.channel.receive()

    def latency(self, n: int) -> list[float]:
        ch = self.workers[0].channel
        out: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            ch.send(i)
            r = ch.receive()
            out.append(time.perf_counter() - t0)
            check(r == i + 1, "inc")
        return out

    def spread(self, items: list[int]) -> list[int]:
        channels = [w.channel for w in self.workers]
        k = len(channels)
        for j, x in enumerate(items):
            channels[j % k].send(x)
        return [channels[j % k].receive() for j in range(len(items))]

    def echo(self, payload: bytes) -> float:
        ch = self.workers[0].channel
        t0 = time.perf_counter()
        ch.send(payload)
        r = ch.receive()
        dt = time.perf_counter() - t0
        check(len(r) == len(payload), "echo length")
        return dt

    def teardown(self) -> None:
        for w in self.workers:
            w.close()
        self.workers = []


PEER = ExecnetPeer
