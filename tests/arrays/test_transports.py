"""Only a connection between processes of one host (a Unix socket) uses shared memory: over
TCP (and TLS, to another host) an array travels inside the message."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from rpc_parallel.rpc import (
    FunctionSpec,
    Implementation,
    _segments,
    connect_tcp,
    connect_unix,
    serve_tcp,
    serve_unix,
    tls,
)
from rpc_parallel.rpc._frame_buffers import FrameBuffer

from .support import segments

pytestmark = pytest.mark.skipif(not _segments.available(), reason="needs /dev/shm")

SECRET = b"arrays test secret"


async def echo(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return a


ECHO = FunctionSpec.from_callable(echo, kind="rpc")


def frame_buffer_of(array: np.ndarray) -> FrameBuffer | None:  # type: ignore[type-arg]
    """The received frame's buffer that ``array`` uses as its memory, if it does."""
    base: object = array
    while isinstance(base, np.ndarray):
        base = base.base
    owner = getattr(base, "_buffer", None)
    return owner if isinstance(owner, FrameBuffer) else None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_only_unix_sockets_share_memory(transport: str) -> None:
    before = segments()
    big = np.random.default_rng(0).random(2**20)  # 8 MiB
    with tempfile.TemporaryDirectory() as directory:
        options = {"secret": SECRET, "implementations": [Implementation(ECHO, echo)]}
        if transport == "tcp":
            server = await serve_tcp(**options)  # type: ignore[arg-type]
            host, port = server.address  # type: ignore[misc]
            client = await connect_tcp(host, port, secret=SECRET)
        else:
            path = os.path.join(directory, "s")
            server = await serve_unix(path, **options)  # type: ignore[arg-type]
            client = await connect_unix(path, secret=SECRET)
        async with server:
            back = await client.call(ECHO, big)
            np.testing.assert_array_equal(back, big)
            if transport == "tcp":
                assert segments() == before  # the data went through the socket
                # Its memory is the buffer the frame was received into (no copy out of it).
                assert frame_buffer_of(back) is not None
                assert back.flags.aligned and back.flags.writeable
            else:
                assert len(segments() - before) == 2  # one lent each way, kept for reuse
            client.close()
            await client.wait_closed()
    assert segments() == before


async def echo_any(a: Any) -> Any:
    return a


ECHO_ANY = FunctionSpec.from_callable(echo_any, kind="rpc")
IDENTITY = tls.TlsIdentity.generate()


def samples() -> list[Any]:
    rng = np.random.default_rng(11)
    return [
        rng.random(2**20 // 8 * 8 + 3),  # 8 MiB + 24 bytes
        np.asfortranarray(rng.random((513, 1027)).astype(">f8")),  # big-endian, column-major
        rng.integers(0, 2**31, (1024, 1536), dtype=np.int32)[::2, 1::3],  # strided
        rng.random((200, 300, 3)).astype(np.float32).transpose(2, 0, 1),  # neither order
        np.full(100_003, 1 - 2j, dtype=np.complex128),  # 16-byte items
        np.zeros(70_001, dtype=[("id", "<i4"), ("weight", ">f8"), ("tag", "S3")]),
        rng.integers(0, 256, 65_537, dtype=np.uint8),  # just over the splice threshold
        np.arange(1000, dtype=np.int16),  # under it: in the extension value as before
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("secure", [False, True], ids=["tcp", "tls"])
async def test_arrays_over_tcp_and_tls_are_copied_once_each_way(secure: bool) -> None:
    """Over TCP and TLS an array goes in band: the sender copies its bytes once, straight
    into the frame (aligned), and the receiver uses the frame's buffer as the array's memory.
    Several arrays in one message, small values around them, every dtype and memory order."""
    server = await serve_tcp(secret=SECRET, implementations=[Implementation(ECHO_ANY, echo_any)],
                             ssl=tls.server_context(IDENTITY) if secure else None)
    host, port = server.address  # type: ignore[misc]
    client = await connect_tcp(host, int(port), secret=SECRET,
                               ssl=tls.client_context(IDENTITY) if secure else None)
    async with server:
        values = samples()
        message = {"first": values[0], "rest": values[1:], "note": "between", "n": 7}
        for _ in range(2):  # the second time into a reused receive buffer, or a new one
            back = await client.call(ECHO_ANY, message)
            assert back["note"] == "between" and back["n"] == 7
            for sent, got in zip(values, [back["first"], *back["rest"]], strict=True):
                assert got.dtype == sent.dtype and got.shape == sent.shape
                np.testing.assert_array_equal(got, sent)
                assert got.flags.aligned and got.flags.writeable
            # Each is a fraction of the frame: copied out (it would keep the whole frame).
            assert frame_buffer_of(back["first"]) is None
        for value in values:  # alone, as the whole argument
            got = await client.call(ECHO_ANY, value)
            np.testing.assert_array_equal(got, value)
            assert got.flags.aligned and got.flags.writeable
            if value.nbytes > 2**18:  # a large frame: its buffer is the array's memory
                assert frame_buffer_of(got) is not None
            got.flat[0] = got.flat[1]  # its own memory: the sender's array is untouched
            np.testing.assert_array_equal(value, samples()[[v is value for v in values].index(True)])
        client.close()
        await client.wait_closed()


def test_splice_aligns_the_data_and_decodes_as_before() -> None:
    """The spliced message is the in-band form any receiver decodes (the header's padding
    is an optional field), with the data at a multiple of 64 bytes from the payload."""
    from rpc_parallel.rpc import _arrays
    from rpc_parallel.rpc.functions import make_decoder, make_encoder

    deferred: list[tuple[bytes, memoryview]] = []
    encoder = make_encoder(None, deferred)
    decoder = make_decoder(Any)
    for prefix in range(0, 70, 7):  # the arrays start at varied offsets
        data = np.arange(20_000, dtype=np.float64) + prefix
        out = bytearray(b"x" * prefix)
        encoder.encode_into(["y" * prefix, data, 3, data[::2].copy()], out, -1)
        assert len(deferred) == 2 and len(out) < 500  # placeholders: no data yet
        _arrays.splice(out, prefix, deferred)
        assert not deferred
        at = bytes(out).find(data.tobytes())
        assert at >= 0 and (at - prefix) % _arrays.ALIGNMENT == 0
        text, first, three, second = decoder.decode(memoryview(out)[prefix:])
        assert text == "y" * prefix and three == 3
        np.testing.assert_array_equal(first, data)
        np.testing.assert_array_equal(second, data[::2])


@pytest.mark.timeout(60)
async def test_a_frame_buffer_is_reused_only_once_its_array_is_garbage() -> None:
    """The buffer an array received over TCP uses goes back for later frames when the array
    (and every view of it) is garbage, never before: a kept array keeps its values while
    more arrays arrive."""
    import gc

    from rpc_parallel.rpc import _frame_buffers as frames

    server = await serve_tcp(secret=SECRET, implementations=[Implementation(ECHO_ANY, echo_any)])
    host, port = server.address  # type: ignore[misc]
    client = await connect_tcp(host, int(port), secret=SECRET)
    async with server:
        first = np.full(2**20, 1.0)  # 8 MiB
        kept = await client.call(ECHO_ANY, first)
        buffer = frame_buffer_of(kept)
        assert buffer is not None and buffer.viewed
        view = kept[10:]
        del kept
        gc.collect()
        assert not any(b is buffer for b in frames._free_buffers)  # a view still uses it
        for value in (2.0, 3.0, 4.0):  # more frames of the same size, while the view lives
            other = await client.call(ECHO_ANY, np.full(2**20, value))
            assert frame_buffer_of(other) is not buffer
            assert float(other[-1]) == value
            del other
            gc.collect()
        assert float(view[0]) == 1.0 and float(view[-1]) == 1.0  # never overwritten
        del view
        gc.collect()
        assert any(b is buffer for b in frames._free_buffers)  # given back
        again = await client.call(ECHO_ANY, np.full(2**20, 5.0))
        assert float(again[0]) == 5.0 and float(again[-1]) == 5.0
        assert len(frames._free_buffers) <= frames.KEEP_BUFFERS
        del again
        client.close()
        await client.wait_closed()
