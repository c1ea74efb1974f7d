"""A stand-alone RPC server for the attack tests and the long fuzz run.

``server.py unix PATH HANDSHAKE_TIMEOUT`` or ``server.py tcp 0 HANDSHAKE_TIMEOUT``. The secret
arrives on stdin (one hex line; never on the command line). Prints one JSON line
``{"address": ..., "pid": ...}`` once it listens, and exits when stdin closes.

Functions (menu order): ``hit`` rpc (x: int) -> int (counts calls), ``hits`` rpc () -> int,
``echo`` rpc (data: bytes) -> bytes, ``count`` pipe (n: int) -> int, ``total`` reverse pipe
(stream of int) -> int, ``note`` one-way (x: int), ``status`` rpc () -> [int, int]: the
number of connections the server holds and of tasks on its loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

from rpc_parallel.rpc import (
    FunctionSpec,
    Implementation,
    RpcSettings,
    run,
    serve_tcp,
    serve_unix,
)


class Counter:
    def __init__(self) -> None:
        self.hits = 0
        self.notes = 0


def implementations(counter: Counter, connections: list[int]) -> list[Implementation]:
    async def hit(x: int) -> int:
        counter.hits += 1
        return x

    async def hits() -> int:
        return counter.hits

    async def echo(data: bytes) -> bytes:
        return data

    async def count(n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def total(values: AsyncIterator[int]) -> int:
        return sum([v async for v in values])

    async def note(x: int) -> None:
        counter.notes += 1

    async def status() -> tuple[int, int]:
        return connections[0], len(asyncio.all_tasks())

    return [
        Implementation(FunctionSpec("hit", kind="rpc", parameters=[("x", int)], response=int), hit),
        Implementation(FunctionSpec("hits", kind="rpc", response=int), hits),
        Implementation(FunctionSpec("echo", kind="rpc", parameters=[("data", bytes)],
                                    response=bytes), echo),
        Implementation(FunctionSpec("count", kind="pipe", parameters=[("n", int)], item=int),
                       count),
        Implementation(FunctionSpec("total", kind="reverse_pipe", item=int, response=int), total),
        Implementation(FunctionSpec("note", kind="one_way", parameters=[("x", int)]), note),
        Implementation(FunctionSpec("status", kind="rpc", response=tuple[int, int]), status),
    ]


async def main() -> None:
    transport, where, handshake_timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    secret = bytes.fromhex((await reader.readline()).decode().strip())
    settings = RpcSettings(handshake_timeout=handshake_timeout)
    connections = [0]
    specs = implementations(Counter(), connections)
    if transport == "unix":
        server = await serve_unix(where, secret=secret, implementations=specs, settings=settings)
    else:
        server = await serve_tcp("127.0.0.1", 0, secret=secret, implementations=specs,
                                 settings=settings)

    async def count_connections() -> None:
        while True:
            connections[0] = len(server.connections)
            await asyncio.sleep(0.05)

    counting = asyncio.ensure_future(count_connections())
    print(json.dumps({"address": server.address, "pid": os.getpid()}), flush=True)
    while await reader.read(4096):
        pass
    counting.cancel()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    run(main())
