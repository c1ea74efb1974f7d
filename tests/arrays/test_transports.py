"""Only a connection between processes of one host (a Unix socket) uses shared memory: over
TCP (and TLS, to another host) an array travels inside the message."""

from __future__ import annotations

import os
import tempfile

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
)

from .support import segments

pytestmark = pytest.mark.skipif(not _segments.available(), reason="needs /dev/shm")

SECRET = b"arrays test secret"


async def echo(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return a


ECHO = FunctionSpec.from_callable(echo, kind="rpc")


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
                assert back.base is None  # copied out of the message into its own memory
            else:
                assert len(segments() - before) == 2  # one lent each way, kept for reuse
            client.close()
            await client.wait_closed()
    assert segments() == before
