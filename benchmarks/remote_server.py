"""The echo server of benchmarks/remote.py, run inside the namespace host.

Reads one JSON order on stdin (``host``, ``secret`` hex, optional ``certificate``/``key`` PEM
for TLS, optional ``loop_tls``: TLS in the event loop's own layer instead of the RPC
layer's transport, for comparison), serves ``add`` and ``echo`` with the RPC layer, prints
its port, and exits when stdin ends.
"""

from __future__ import annotations

import asyncio
import json
import sys

from remote_specs import ADD, ECHO

from rpc_parallel.rpc import Connection, Implementation, TlsIdentity, serve_tcp, server_context
from rpc_parallel.rpc import run as rpc_run


async def add(x: int) -> int:
    return x + 1


async def echo(data: bytes) -> bytes:
    return data


IMPLEMENTATIONS = [Implementation(ADD, add), Implementation(ECHO, echo)]


async def serve_with_loop_tls(host: str, secret: bytes, identity: TlsIdentity) -> asyncio.Server:
    """The same server, with TLS in the event loop's layer (``loop.create_server(ssl=)``)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: Connection(secret=secret, implementations=IMPLEMENTATIONS, is_client=False),
        host, 0, ssl=server_context(identity))


async def main() -> None:
    order = json.loads(sys.stdin.readline())
    secret = bytes.fromhex(order["secret"])
    identity = None
    if order.get("certificate"):
        identity = TlsIdentity(order["certificate"].encode(), order["key"].encode())
    server: asyncio.Server | object
    if identity is not None and order.get("loop_tls"):
        loop_server = await serve_with_loop_tls(order["host"], secret, identity)
        port, server = loop_server.sockets[0].getsockname()[1], loop_server
    else:
        rpc_server = await serve_tcp(
            order["host"], 0, secret=secret, implementations=IMPLEMENTATIONS,
            ssl=None if identity is None else server_context(identity))
        port, server = rpc_server.address[1], rpc_server  # type: ignore[index]
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
    server.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    rpc_run(main())
