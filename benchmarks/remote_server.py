"""The echo server of benchmarks/remote.py, run inside the namespace host.

Reads one JSON order on stdin: ``secret`` (hex), ``certificate`` and ``key`` (PEM), and
``listeners``, a list of ``[host, kind]`` with kind ``tls`` (the RPC layer's TLS
transport), ``loop_tls`` (TLS in the event loop's own layer, as before the RPC layer had
its own) or ``tcp``. Serves ``add`` and ``echo`` on each, all in this one process (so that
every link is measured against the same server, scheduled alike), prints the ports as a
JSON list, and exits when stdin ends.
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


async def listen(host: str, kind: str, secret: bytes, identity: TlsIdentity
                 ) -> tuple[int, asyncio.Server | object]:
    """One listener of the kind asked for; its port and what closes it."""
    if kind == "loop_tls":
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Connection(secret=secret, implementations=IMPLEMENTATIONS, is_client=False),
            host, 0, ssl=server_context(identity))
        return server.sockets[0].getsockname()[1], server
    if kind not in ("tls", "tcp"):
        raise ValueError(f"unknown listener kind {kind!r}")
    served = await serve_tcp(host, 0, secret=secret, implementations=IMPLEMENTATIONS,
                             ssl=server_context(identity) if kind == "tls" else None)
    return served.address[1], served  # type: ignore[index]


async def main() -> None:
    order = json.loads(sys.stdin.readline())
    secret = bytes.fromhex(order["secret"])
    identity = TlsIdentity(order["certificate"].encode(), order["key"].encode())
    listeners = [await listen(host, kind, secret, identity) for host, kind in order["listeners"]]
    print(json.dumps([port for port, _ in listeners]), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes stdin
    for _, server in listeners:
        server.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    rpc_run(main())
