"""Flow control: a fast producer in another process against a slow consumer.

The producer offers 1 GiB in 1 MiB items. The consumer first reads nothing for a while (the
producer must stall after about one credit window), then drains everything. The producer's
peak RSS (VmHWM) stays under 200 MB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from . import layer as rpc
from .peer import CONSUME, PRODUCER
from .support import SECRET, Subprocess, tcp_address, vm_hwm, wait_for

ITEM = 1024 * 1024
COUNT = 1024  # 1 GiB in all
RSS_CEILING = 200 * 1024 * 1024
SLOW_START = 0.5
"""How long the consumer reads nothing (a deliberate slow consumer, not a wait for a condition)."""
WINDOW_ITEMS = rpc.RpcSettings().stream_window // ITEM


async def test_pipe_producer_memory_is_bounded() -> None:
    peer = await Subprocess.start("serve")
    try:
        _, host, port = (await peer.line()).split()
        client = await rpc.connect_tcp(host, int(port), secret=SECRET)
        reader = await client.pipe(PRODUCER["produce"], COUNT, ITEM)
        first = await wait_for(anext(reader))
        assert len(first) == ITEM
        await asyncio.sleep(SLOW_START)
        # The producer stalled after about one window, even though it could go on.
        produced = await client.call(PRODUCER["produced_count"])
        assert produced <= WINDOW_ITEMS + 3, produced
        total = len(first)
        async for item in reader:
            total += len(item)
        assert total == COUNT * ITEM
        assert await client.call(PRODUCER["produced_count"]) == COUNT
        peak = vm_hwm(peer.pid)
        assert peak < RSS_CEILING, f"producer peak RSS {peak / 2**20:.0f} MiB"
        client.close()
        await client.wait_closed()
    finally:
        assert await peer.stop() == 0


async def test_reverse_pipe_producer_memory_is_bounded() -> None:
    started = asyncio.Event()
    produced_while_stalled: list[int] = []

    async def consume(stream: AsyncIterator[bytes]) -> int:
        total = 0
        async for item in stream:
            if not started.is_set():
                started.set()
                await asyncio.sleep(SLOW_START)
                # Ask the producer (the caller) how far it got while this side did not read.
                caller = rpc.current_connection.get()
                produced_while_stalled.append(await caller.call(PRODUCER["produced_count"]))
            total += len(item)
        return total

    server = await rpc.serve_tcp(
        secret=SECRET, implementations=[rpc.Implementation(CONSUME, consume)]
    )
    async with server:
        host, port = tcp_address(server)
        peer = await Subprocess.start("feed", host, str(port), str(COUNT), str(ITEM))
        try:
            assert await peer.line(timeout=30) == f"DONE {COUNT * ITEM}"
            assert produced_while_stalled[0] <= WINDOW_ITEMS + 3, produced_while_stalled
            peak = vm_hwm(peer.pid)
            assert peak < RSS_CEILING, f"producer peak RSS {peak / 2**20:.0f} MiB"
        finally:
            assert await peer.stop() == 0


async def test_small_items_are_bounded_by_count_too() -> None:
    """Tiny items: each counts ITEM_OVERHEAD bytes beyond its payload against the window, so
    a stalled reader queues thousands of items, not millions."""
    from rpc_parallel.rpc.streams import ITEM_OVERHEAD

    from .support import S, serving

    async with serving("unix") as pair:
        reader = await pair.client.pipe(S.endless, "small")
        assert await wait_for(anext(reader)) == 0
        await asyncio.sleep(SLOW_START)
        window = rpc.RpcSettings().stream_window
        assert pair.service.yielded["small"] <= window // ITEM_OVERHEAD + 2
        # Then it drains as fast as it is read.
        for i in range(1, 100_000):
            assert await anext(reader) == i
        await reader.aclose()
        await wait_for(pair.service.events["small:finally"].wait())
