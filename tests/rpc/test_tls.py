"""TLS between hosts (rpc/tls.py) over real sockets: loopback, and the namespace link.

Each refusal is checked on both sides: the client fails, and on the server no connection
authenticated and no function ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest

from rpc_parallel.rpc import tls

from ..harness.netns import NamespaceHost
from . import layer as rpc
from .support import ROOT, TIMEOUT, wait_for
from .tls_client import ADD, Order

SECRET = b"tls test secret"
IDENTITY = tls.TlsIdentity.generate()
OTHER = tls.TlsIdentity.generate()


@dataclass
class Served:
    """A TLS server and what happened on it."""

    server: rpc.Server
    calls: int = 0
    authenticated: list[rpc.Connection] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    """Addresses of the clients that authenticated."""

    def on_connection(self, connection: rpc.Connection) -> None:
        self.authenticated.append(connection)
        self.peers.append(connection.peer_address)

    @property
    def address(self) -> tuple[str, int]:
        address = self.server.address
        assert isinstance(address, tuple)
        return address

    def assert_nothing_ran(self) -> None:
        assert self.calls == 0, "a function ran for a refused client"
        assert not self.authenticated, "a refused client authenticated"


@contextlib.asynccontextmanager
async def tls_server(host: str = "127.0.0.1") -> AsyncIterator[Served]:
    served: Served

    async def add(x: int, y: int) -> int:
        served.calls += 1
        return x + y

    server = await rpc.serve_tcp(
        host, 0, secret=SECRET, implementations=[rpc.Implementation(ADD, add)],
        ssl=tls.server_context(IDENTITY), on_connection=lambda c: served.on_connection(c),
    )
    served = Served(server)
    async with server:
        yield served


def presenting(presented: tls.TlsIdentity | None) -> ssl.SSLContext:
    """A client that trusts our server but presents ``presented`` (or no certificate)."""
    if presented is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.minimum_version = ssl.TLSVersion.TLSv1_3
    else:
        context = tls.client_context(presented)
    context.load_verify_locations(cadata=IDENTITY.certificate.decode())
    return context


async def refused(served: Served, context: ssl.SSLContext | None = None) -> BaseException:
    """Connect (in TLS with ``context``); the connection must fail. Returns the error."""
    with pytest.raises((rpc.HandshakeError, ssl.SSLError, ConnectionError)) as caught:
        client = await wait_for(rpc.connect_tcp(*served.address, secret=SECRET, ssl=context))
        try:  # (unreachable when refused) a call must not get through either
            await wait_for(client.call(ADD, 1, 1))
        finally:
            client.close()
    served.assert_nothing_ran()
    return caught.value


# ---------------------------------------------------------------------- identity


def test_identity_round_trips_and_hides_its_key() -> None:
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(IDENTITY), type=tls.TlsIdentity)
    assert decoded == IDENTITY
    assert b"PRIVATE KEY" not in repr(IDENTITY).encode()
    assert IDENTITY.fingerprint != OTHER.fingerprint
    with pytest.raises(msgspec.ValidationError, match="not a PEM certificate"):
        msgspec.msgpack.decode(msgspec.msgpack.encode({"certificate": b"x", "key": IDENTITY.key}),
                               type=tls.TlsIdentity)


def test_mismatched_key_is_a_clear_error() -> None:
    wrong = tls.TlsIdentity(IDENTITY.certificate, OTHER.key)
    with pytest.raises(ValueError, match="certificate and key must match"):
        tls.server_context(wrong)


def test_contexts_are_tls13_mutual_and_ignore_system_cas() -> None:
    for context in (tls.server_context(IDENTITY), tls.client_context(IDENTITY)):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.cert_store_stats() == {"x509": 1, "crl": 0, "x509_ca": 0}  # ours only


def test_without_memfd_no_file_is_left(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls, "_USE_MEMFD", False)
    directory = Path(tempfile.gettempdir())
    before = {p.name for p in directory.glob("rp-tls-*")}
    tls.server_context(IDENTITY)
    assert {p.name for p in directory.glob("rp-tls-*")} == before


def test_memfd_is_closed_after_loading() -> None:
    before = set(os.listdir("/proc/self/fd"))
    tls.client_context(IDENTITY)
    assert set(os.listdir("/proc/self/fd")) <= before


def test_cryptography_is_imported_only_to_generate() -> None:
    """Importing the layer and loading an identity (what a worker does) need only ``ssl``."""
    program = (
        "import sys, msgspec\n"
        "from rpc_parallel.rpc import tls\n"
        "identity = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=tls.TlsIdentity)\n"
        "tls.server_context(identity); tls.client_context(identity)\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-c", program], input=msgspec.msgpack.encode(IDENTITY),
                            capture_output=True, timeout=60, env=env, check=True)
    assert result.stdout.decode().strip() == "[]"


# ---------------------------------------------------------------------- loopback


async def test_tls_call_works() -> None:
    async with tls_server() as served:
        client = await wait_for(rpc.connect_tcp(*served.address, secret=SECRET,
                                                ssl=tls.client_context(IDENTITY)))
        try:
            assert await wait_for(client.call(ADD, 2, 3)) == 5
            assert client._transport is not None
            ssl_object = client._transport.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.3"
        finally:
            client.close()
        assert served.calls == 1 and len(served.authenticated) == 1


async def test_plaintext_client_is_refused() -> None:
    async with tls_server() as served:
        await refused(served)


async def test_client_of_another_application_is_refused() -> None:
    async with tls_server() as served:
        error = await refused(served, tls.client_context(OTHER))
        assert isinstance(error, ssl.SSLCertVerificationError)  # it does not trust us either


async def test_server_refuses_a_certificate_it_did_not_issue() -> None:
    """The client trusts the server, but presents another application's certificate."""
    async with tls_server() as served:
        await refused(served, presenting(OTHER))


async def test_server_refuses_a_client_without_certificate() -> None:
    async with tls_server() as served:
        await refused(served, presenting(None))


async def test_right_certificate_wrong_secret_is_refused_by_the_hmac() -> None:
    async with tls_server() as served:
        with pytest.raises(rpc.HandshakeError, match="secret"):
            await wait_for(rpc.connect_tcp(*served.address, secret=b"another secret",
                                           ssl=tls.client_context(IDENTITY)))
        served.assert_nothing_ran()


# ---------------------------------------------------------------------- the namespace link


async def run_in_namespace(host: NamespaceHost, order: Order) -> str:
    """Run tls_client.py inside the namespace; the order travels on its standard input."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    process = await asyncio.create_subprocess_exec(
        *host.exec_argv([sys.executable, "-m", "tests.rpc.tls_client"]), cwd=ROOT, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(
            process.communicate(msgspec.msgpack.encode(order)), 4 * TIMEOUT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    return out.decode().strip()


async def test_tls_over_the_namespace_link(namespace_host: NamespaceHost) -> None:
    async with tls_server(namespace_host.host_address) as served:
        host, port = served.address
        assert host == namespace_host.host_address

        def order(secret: bytes = SECRET, identity: tls.TlsIdentity | None = IDENTITY) -> Order:
            return Order(host, port, secret, identity)

        cases = [(order(identity=None), "refused "),
                 (order(identity=OTHER), "refused SSLCertVerificationError"),
                 (order(secret=b"wrong"), "refused HandshakeError: authentication failed")]
        for refused_order, expected in cases:
            answer = await run_in_namespace(namespace_host, refused_order)
            assert answer.startswith(expected), answer
            served.assert_nothing_ran()
        assert await run_in_namespace(namespace_host, order()) == "ok 5"
        assert served.calls == 1
        assert served.peers[0][0] == namespace_host.address  # it came over the link


async def test_refused_tls_clients_are_not_kept_by_the_server() -> None:
    """A client refused during the TLS handshake never becomes one of the server's
    connections (they are registered once the transport is up), so refusals cannot pile up
    until the server closes."""
    async with tls_server() as served:
        for _ in range(5):
            await refused(served)
            await refused(served, presenting(OTHER))
            await refused(served, presenting(None))
        await _until(lambda: not served.server.connections, "refused connections to go")
        client = await wait_for(rpc.connect_tcp(*served.address, secret=SECRET,
                                                ssl=tls.client_context(IDENTITY)))
        try:
            assert len(served.server.connections) == 1  # the accepted one is kept
        finally:
            client.close()
        await _until(lambda: not served.server.connections, "the closed connection to go")


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` for at most TIMEOUT seconds."""
    for _ in range(int(TIMEOUT / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")
