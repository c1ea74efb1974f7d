"""Opening connections and serving them, over TCP or Unix domain sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl as ssl_module
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import _tls_transport
from ._serving import Implementation
from .connection import Connection, TranslateClosed
from .errors import ProtocolError
from .functions import FunctionSpec
from .settings import RpcSettings
from .tls import TlsIdentity, client_context

OnConnection = Callable[[Connection], None]


def _factory(
    *,
    secret: bytes,
    implementations: Sequence[Implementation],
    settings: RpcSettings | None,
    is_client: bool,
    on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None,
    on_ready: OnConnection | None = None,
    translate_closed: TranslateClosed | None = None,
    on_made: OnConnection | None = None,
) -> Callable[[], Connection]:
    def make() -> Connection:
        return Connection(
            secret=secret,
            implementations=implementations,
            settings=settings,
            is_client=is_client,
            on_one_way_error=on_one_way_error,
            on_ready=on_ready,
            translate_closed=translate_closed,
            on_made=on_made,
        )

    return make


async def _connected(connection: Connection) -> Connection:
    try:
        await connection.wait_ready()
    except asyncio.CancelledError:
        connection.close("cancelled during the handshake")
        raise
    return connection


async def connect_tcp(
    host: str,
    port: int,
    *,
    secret: bytes,
    implementations: Sequence[Implementation] = (),
    settings: RpcSettings | None = None,
    ssl: ssl_module.SSLContext | None = None,
    server_hostname: str | None = None,
    on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None = None,
    translate_closed: TranslateClosed | None = None,
) -> Connection:
    """Connect over TCP and finish the handshake (raises ``HandshakeError`` on failure).

    With ``ssl``, TLS runs in this layer's own transport (``_tls_transport``), not in the
    event loop's TLS layer, which is several times slower for large messages.
    """
    loop = asyncio.get_running_loop()
    factory = _factory(secret=secret, implementations=implementations, settings=settings,
                       is_client=True, on_one_way_error=on_one_way_error,
                       translate_closed=translate_closed)
    if ssl is None:
        _, connection = await loop.create_connection(factory, host, port)
        return await _connected(connection)
    tls = await _tls_transport.handshake(
        await _tls_transport.open_connection(host, port), ssl, server_side=False,
        server_hostname=server_hostname or host,
        timeout=(settings or RpcSettings()).handshake_timeout)
    connection = factory()
    _tls_transport.TlsTransport(loop, tls, connection).start()
    return await _connected(connection)


async def connect_unix(
    path: str,
    *,
    secret: bytes,
    implementations: Sequence[Implementation] = (),
    settings: RpcSettings | None = None,
    on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None = None,
    translate_closed: TranslateClosed | None = None,
) -> Connection:
    """Connect over a Unix domain socket and finish the handshake."""
    loop = asyncio.get_running_loop()
    factory = _factory(secret=secret, implementations=implementations, settings=settings,
                       is_client=True, on_one_way_error=on_one_way_error,
                       translate_closed=translate_closed)
    if path.startswith("\0"):
        # An abstract socket (Linux): connected here, since not every loop's own connect
        # takes a name that starts with NUL (uvloop's does not).
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, path)
        except BaseException:
            sock.close()
            raise
        _, connection = await loop.create_unix_connection(factory, sock=sock)
    else:
        _, connection = await loop.create_unix_connection(factory, path)
    return await _connected(connection)


@dataclass(frozen=True)
class Unix:
    """A Unix domain socket at ``path``."""

    path: str

    @property
    def wire(self) -> str:
        """The text form, ``unix:<path>`` (what travels in registrations and handles)."""
        return f"unix:{self.path}"


@dataclass(frozen=True)
class Tcp:
    """A TCP listener at ``host``:``port``; ``tls``: its connections run inside TLS with
    the application's keys (``rpc/tls.py``)."""

    host: str
    port: int
    tls: bool = False

    @property
    def wire(self) -> str:
        """The text form, ``tcp:<host>:<port>`` (``tls:<host>:<port>`` with TLS)."""
        return f"{'tls' if self.tls else 'tcp'}:{self.host}:{self.port}"


Address = Unix | Tcp
"""Where a server listens."""


def parse_address(text: str) -> Address:
    """An ``Address`` from its wire form; ``ProtocolError`` for anything else."""
    if text.startswith("unix:"):
        return Unix(text[5:])
    if text.startswith(("tcp:", "tls:")):
        host, _, port = text[4:].rpartition(":")
        if host and port.isdigit():
            return Tcp(host.strip("[]"), int(port), tls=text.startswith("tls:"))
    raise ProtocolError(
        f"unknown address {text!r} (expected unix:<path>, tcp:<host>:<port> or tls:<host>:<port>)"
    )


async def connect(
    address: Address,
    *,
    secret: bytes,
    implementations: Sequence[Implementation] = (),
    settings: RpcSettings | None = None,
    on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None = None,
    translate_closed: TranslateClosed | None = None,
    ssl: ssl_module.SSLContext | None = None,
    identity: TlsIdentity | None = None,
) -> Connection:
    """Connect to ``address`` and finish the handshake (``ssl`` is for TCP only).

    A ``tls`` address needs ``ssl`` or the application's ``identity`` (the client then
    presents it and accepts only a server presenting the same certificate).
    """
    if isinstance(address, Unix):
        return await connect_unix(
            address.path, secret=secret, implementations=implementations, settings=settings,
            on_one_way_error=on_one_way_error, translate_closed=translate_closed,
        )
    if address.tls and ssl is None:
        if identity is None:
            raise ProtocolError(
                f"connecting to {address.wire} needs the application's TLS identity; this "
                "process has none"
            )
        ssl = client_context(identity)
    return await connect_tcp(
        address.host, address.port, secret=secret, implementations=implementations,
        settings=settings, ssl=ssl, on_one_way_error=on_one_way_error,
        translate_closed=translate_closed,
    )


def address_of(server: Server, *, tls: bool = False) -> Address:
    """Where ``server`` listens, as an ``Address`` (``tls``: it was started with TLS)."""
    if isinstance(server.address, str):
        return Unix(server.address)
    return Tcp(*server.address, tls=tls)


class _Listening(Protocol):
    """What a ``Server`` needs of its listener: ``asyncio.Server`` or a ``TlsListener``."""

    @property
    def sockets(self) -> Sequence[Any]: ...

    def is_serving(self) -> bool: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


MAX_PENDING_HANDSHAKES = 256
"""Connections a server lets wait for their handshake at once; beyond it, the oldest is
dropped (a flood of half-open connections costs at most this many small buffers)."""


class Server:
    """Accepts connections and serves ``implementations`` on each.

    ``on_connection`` runs once a connection has authenticated. ``stop_accepting()`` keeps
    open connections; ``close()`` closes them too.
    """

    def __init__(
        self,
        *,
        secret: bytes,
        implementations: Sequence[Implementation],
        settings: RpcSettings | None,
        on_connection: OnConnection | None,
        on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None,
        translate_closed: TranslateClosed | None = None,
    ) -> None:
        self.connections: set[Connection] = set()
        self._pending: dict[Connection, None] = {}  # Not yet authenticated, oldest first.
        self._on_connection = on_connection
        self._server: _Listening | None = None
        self._unix_path: str | None = None
        self.address: tuple[str, int] | str = ""
        self._factory = _factory(
            secret=secret, implementations=implementations, settings=settings,
            is_client=False, on_one_way_error=on_one_way_error, on_ready=self._ready,
            translate_closed=translate_closed, on_made=self._register,
        )
        self.handshake_timeout = (settings or RpcSettings()).handshake_timeout

    def _register(self, connection: Connection) -> None:
        """A connection's transport is made: count it; shed the oldest pending handshake
        when more than ``MAX_PENDING_HANDSHAKES`` are waiting. Registered once the
        transport is up, not when the protocol is made: a TLS client refused during the
        TLS handshake never gets here, so it is never kept."""
        self.connections.add(connection)
        self._pending[connection] = None
        connection.add_close_callback(self._forget)
        if len(self._pending) > MAX_PENDING_HANDSHAKES:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
            oldest.drop(
                f"handshake not finished: more than {MAX_PENDING_HANDSHAKES} connections "
                "were waiting to authenticate (the oldest is dropped)"
            )

    def _serve_tls(self, tls: _tls_transport.Tls) -> None:
        """A client's TLS handshake is done: serve it."""
        _tls_transport.TlsTransport(asyncio.get_running_loop(), tls, self._factory()).start()

    def _forget(self, connection: Connection) -> None:
        self.connections.discard(connection)
        self._pending.pop(connection, None)

    def _ready(self, connection: Connection) -> None:
        self._pending.pop(connection, None)
        if self._on_connection is not None:
            self._on_connection(connection)

    @property
    def is_accepting(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def stop_accepting(self) -> None:
        """Stop taking new connections; existing ones go on."""
        if self._server is not None:
            self._server.close()
        if self._unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._unix_path)
            self._unix_path = None

    def close(self, reason: str = "server closed") -> None:
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close(reason)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()
        for connection in list(self.connections):
            await connection.wait_closed()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()


EVERY_INTERFACE = "*"
"""``serve_tcp(EVERY_INTERFACE)``: every IPv4 and IPv6 address of the host, on one port."""


async def _bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to the first address ``host`` resolves to (IPv6: that family
    only, as asyncio binds it)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def _every_interface_socket(port: int) -> socket.socket:
    """A TCP socket bound to ``port`` on every interface: dual-stack IPv6 when possible
    (asyncio's own "all interfaces" binds one socket per family, on different ports)."""
    if socket.has_ipv6:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("::", port))
            return sock
        except OSError:
            sock.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_tcp(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    secret: bytes,
    implementations: Sequence[Implementation] = (),
    settings: RpcSettings | None = None,
    on_connection: OnConnection | None = None,
    on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None = None,
    translate_closed: TranslateClosed | None = None,
    ssl: ssl_module.SSLContext | None = None,
) -> Server:
    """Serve on TCP (loopback unless told otherwise); ``server.address`` is (host, port).

    ``host=EVERY_INTERFACE`` listens on every interface, IPv6 and IPv4 on one port (one
    dual-stack socket where the system has IPv6, else IPv4 only).
    """
    server = Server(secret=secret, implementations=implementations, settings=settings,
                    on_connection=on_connection, on_one_way_error=on_one_way_error,
                    translate_closed=translate_closed)
    loop = asyncio.get_running_loop()
    if ssl is not None:
        sock = _every_interface_socket(port) if host == EVERY_INTERFACE \
            else await _bound_socket(host, port)
        server._server = _tls_transport.TlsListener(
            sock, ssl, server._serve_tls, timeout=server.handshake_timeout,
            max_handshakes=MAX_PENDING_HANDSHAKES)
    elif host == EVERY_INTERFACE:
        server._server = await loop.create_server(
            server._factory, sock=_every_interface_socket(port))
    else:
        server._server = await loop.create_server(server._factory, host=host, port=port)
    bound = server._server.sockets[0].getsockname()
    server.address = (bound[0], bound[1])
    return server


async def serve_unix(
    path: str,
    *,
    secret: bytes,
    implementations: Sequence[Implementation] = (),
    settings: RpcSettings | None = None,
    on_connection: OnConnection | None = None,
    on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None = None,
    translate_closed: TranslateClosed | None = None,
) -> Server:
    """Serve on a Unix domain socket at ``path`` (created owner-only). A ``path`` that
    starts with NUL is a Linux abstract socket: no file (nothing to remove), and no file
    permissions either: the handshake's secret alone keeps other local users out."""
    server = Server(secret=secret, implementations=implementations, settings=settings,
                    on_connection=on_connection, on_one_way_error=on_one_way_error,
                    translate_closed=translate_closed)
    loop = asyncio.get_running_loop()
    old_umask = os.umask(0o177)
    try:
        server._server = await loop.create_unix_server(server._factory, path)
    finally:
        os.umask(old_umask)
    server._unix_path = None if path.startswith("\0") else path  # An abstract name: no file.
    server.address = path
    return server
