"""A peer in its own process, for tests that need a real second process.

    python -m tests.rpc.peer serve [SETTINGS_JSON]
        serve ``Producer`` on loopback TCP; print ``READY <host> <port>``
    python -m tests.rpc.peer feed HOST PORT COUNT SIZE
        connect, call ``consume`` with COUNT items of SIZE bytes (a reverse pipe), print
        ``DONE <result>``; serve ``produced_count`` to the peer meanwhile

The secret comes from ``RPC_TEST_SECRET`` (hex). Either mode exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator

from tests.rpc import layer as rpc


class Producer:
    def __init__(self) -> None:
        self.produced = 0

    async def produce(self, count: int, size: int) -> AsyncIterator[bytes]:
        """``count`` items of ``size`` bytes, as fast as credit allows (one buffer reused)."""
        chunk = bytes(size)
        for _ in range(count):
            self.produced += 1
            yield chunk

    async def produced_count(self) -> int:
        return self.produced

    async def echo(self, data: bytes) -> bytes:
        return data

    async def hang(self, tag: str) -> int:
        await asyncio.Future()
        return 0

    async def stalled(self) -> AsyncIterator[int]:
        yield 0
        await asyncio.Future()

    def spin(self, seconds: float) -> int:
        import time

        deadline = time.perf_counter() + seconds
        turns = 0
        while time.perf_counter() < deadline:
            turns += sum(range(100))
        return turns


async def consume(stream: AsyncIterator[bytes]) -> int:
    """The signature of the test's consumer (implemented by the test, called by ``feed``)."""
    return sum([len(item) async for item in stream])


PRODUCER_KINDS: dict[str, rpc.Kind] = {
    "produce": "pipe", "produced_count": "rpc", "echo": "rpc", "hang": "rpc",
    "stalled": "pipe", "spin": "rpc",
}
PRODUCER = {
    name: rpc.FunctionSpec.from_callable(
        getattr(Producer, name), kind=kind, name=name, skip_first=True
    )
    for name, kind in PRODUCER_KINDS.items()
}
CONSUME = rpc.FunctionSpec.from_callable(consume, kind="reverse_pipe", name="consume")


def _secret() -> bytes:
    return bytes.fromhex(os.environ["RPC_TEST_SECRET"])


async def _stdin_closed() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


async def serve(settings_json: str | None) -> None:
    producer = Producer()
    settings = rpc.RpcSettings.from_json(settings_json) if settings_json else None
    server = await rpc.serve_tcp(
        secret=_secret(),
        implementations=[
            rpc.Implementation(spec, getattr(producer, name)) for name, spec in PRODUCER.items()
        ],
        settings=settings,
    )
    assert isinstance(server.address, tuple)
    host, port = server.address
    print("READY", host, port, flush=True)
    await _stdin_closed()
    server.close()
    await server.wait_closed()


async def feed(host: str, port: int, count: int, size: int) -> None:
    producer = Producer()
    connection = await rpc.connect_tcp(
        host, port, secret=_secret(),
        implementations=[rpc.Implementation(PRODUCER["produced_count"], producer.produced_count)],
    )

    async def items() -> AsyncIterator[bytes]:
        chunk = bytes(size)
        for _ in range(count):
            producer.produced += 1
            yield chunk

    result = await connection.reverse_pipe(CONSUME, items())
    print("DONE", result, flush=True)
    await _stdin_closed()
    connection.close()
    await connection.wait_closed()


def main(arguments: list[str]) -> None:
    if arguments[0] == "serve":
        rpc.run(serve(arguments[1] if len(arguments) > 1 else None))
    elif arguments[0] == "feed":
        host, port, count, size = arguments[1:5]
        rpc.run(feed(host, int(port), int(count), int(size)))
    else:
        raise SystemExit(f"unknown mode {arguments[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
