"""A TLS client process for tests/rpc/test_tls.py, run inside the namespace host.

Reads one msgpack ``Order`` from standard input (the identity and secret travel there, as
they would over ssh), makes one call and prints ``ok <result>`` or ``refused <error>``.
"""

from __future__ import annotations

import asyncio
import ssl
import sys

import msgspec

from rpc_parallel.rpc import Error, FunctionSpec, connect_tcp, tls


class Order(msgspec.Struct):
    host: str
    port: int
    secret: bytes
    identity: tls.TlsIdentity | None
    """``None``: connect in plain TCP."""


async def add(x: int, y: int) -> int:
    raise AssertionError("the client only calls")


ADD = FunctionSpec.from_callable(add, kind="rpc", name="add")


async def main(order: Order) -> str:
    context: ssl.SSLContext | None = None
    if order.identity is not None:
        context = tls.client_context(order.identity)
    try:
        connection = await asyncio.wait_for(
            connect_tcp(order.host, order.port, secret=order.secret, ssl=context), 10)
    except (Error, OSError) as error:
        return f"refused {type(error).__name__}: {error}"
    try:
        return f"ok {await asyncio.wait_for(connection.call(ADD, 2, 3), 10)}"
    finally:
        connection.close()
        await connection.wait_closed()


if __name__ == "__main__":
    print(asyncio.run(main(msgspec.msgpack.decode(sys.stdin.buffer.read(), type=Order))))
