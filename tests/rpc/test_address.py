"""Addresses as values: wire form round trip, clear errors, connecting by address."""

from __future__ import annotations

import pytest

from rpc_parallel.rpc import ProtocolError, serve_tcp
from rpc_parallel.rpc.transport import Tcp, Unix, address_of, connect, parse_address

SECRET = b"address test secret"


def test_wire_forms_round_trip() -> None:
    for address in (Unix("/tmp/x/worker.sock"), Tcp("127.0.0.1", 4242), Tcp("::1", 1)):
        assert parse_address(address.wire) == address


@pytest.mark.parametrize("text", ["", "udp:1.2.3.4:5", "tcp:nohost", "tcp:host:port", "/tmp/s"])
def test_a_bad_address_is_refused_by_name(text: str) -> None:
    with pytest.raises(ProtocolError, match="unknown address"):
        parse_address(text)


async def test_connect_by_address() -> None:
    server = await serve_tcp(secret=SECRET)
    try:
        address = address_of(server)
        assert isinstance(address, Tcp)
        connection = await connect(parse_address(address.wire), secret=SECRET)
        assert not connection.is_closed
        connection.close()
        await connection.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


def test_tls_addresses_round_trip_and_need_an_identity() -> None:
    address = parse_address("tls:10.0.0.7:4242")
    assert address == Tcp("10.0.0.7", 4242, tls=True)
    assert address.wire == "tls:10.0.0.7:4242"
    assert parse_address("tcp:10.0.0.7:4242") == Tcp("10.0.0.7", 4242)


async def test_connecting_to_a_tls_address_without_identity_is_refused_by_name() -> None:
    with pytest.raises(ProtocolError, match="needs the application's TLS identity"):
        await connect(parse_address("tls:127.0.0.1:1"), secret=SECRET)
