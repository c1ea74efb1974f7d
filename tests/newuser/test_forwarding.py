"""#11.1, the forwarder alone: whatever the bytes and however they are split into reads,
the output is the input with ``[name] `` at each line start (and a final newline)."""

from __future__ import annotations

import asyncio
import io

from hypothesis import given, settings
from hypothesis import strategies as st

from rpc_parallel.launch._process import forward

PREFIX = b"[w] "


def expected(data: bytes) -> bytes:
    if not data:
        return b""
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return b"".join(PREFIX + line + b"\n" for line in lines)


def run_forward(pieces: list[bytes]) -> tuple[bytes, bytes]:
    async def main() -> tuple[bytes, bytes]:
        stream = asyncio.StreamReader(limit=16)  # a small limit: forward must not care
        target = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        tail = bytearray()
        forwarding = asyncio.ensure_future(forward(stream, target, PREFIX, tail))
        for piece in pieces:  # one read per piece: the forwarder runs between them
            stream.feed_data(piece)
            await asyncio.sleep(0)
        stream.feed_eof()
        await asyncio.wait_for(forwarding, 10.0)
        target.flush()
        buffer = target.buffer
        assert isinstance(buffer, io.BytesIO)
        return buffer.getvalue(), bytes(tail)

    return asyncio.run(main())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300) | st.sampled_from([b"\n", b"\n\n", b"\xff\xfe"]),
                max_size=20))
def test_any_bytes_in_any_pieces_arrive_whole_and_prefixed(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    out, tail = run_forward(pieces)
    assert out == expected(data)
    assert tail == data[-16384:]


def test_long_lines_and_no_final_newline() -> None:
    long = b"x" * (3 * 65536 + 5)
    data = b"a\n" + long + b"\n\nend"
    out, _ = run_forward([data[i:i + 1000] for i in range(0, len(data), 1000)])
    assert out == PREFIX + b"a\n" + PREFIX + long + b"\n" + PREFIX + b"\n" + PREFIX + b"end\n"
