"""The echo server of benchmarks/remote.py, run inside the namespace host.

Reads one JSON order on stdin (``host``, ``secret`` hex, optional ``certificate``/``key`` PEM
for TLS), serves ``add`` and ``echo`` with the RPC layer, prints its port, and exits when
stdin ends.
"""

from __future__ import annotations

import asyncio
import json
import sys

from remote_specs import ADD, ECHO

from rpc_parallel.rpc import Implementation, TlsIdentity, serve_tcp, server_context
from rpc_parallel.rpc import run as rpc_run


async def add(x: int) -> int:
    return x + 1


async def echo(data: bytes) -> bytes:
    return data


async def main() -> None:
    order = json.loads(sys.stdin.readline())
    ssl = None
    if order.get("certificate"):
        identity = TlsIdentity(order["certificate"].encode(), order["key"].encode())
        ssl = server_context(identity)
    server = await serve_tcp(
        order["host"], 0, secret=bytes.fromhex(order["secret"]), ssl=ssl,
        implementations=[Implementation(ADD, add), Implementation(ECHO, echo)],
    )
    print(server.address[1], flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
    server.close()


if __name__ == "__main__":
    rpc_run(main())
