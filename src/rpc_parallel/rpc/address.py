"""Where a server listens, as text: ``unix:<path>``, ``tcp:<host>:<port>``, ``tls:<host>:<port>``.

An address is what a peer needs to connect: the transport, and for TCP whether the
connection runs inside TLS (``tls:``, with the application's :class:`TlsIdentity`). The text
form travels on the wire (a worker's registration, a handle passed as an argument), so it
stays a plain string; :func:`parse_address` gives its typed form and :func:`connect_address`
opens a connection to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .connection import Connection, Implementation, TranslateClosed
from .functions import FunctionSpec
from .settings import RpcSettings
from .tls import TlsIdentity, client_context
from .transport import connect_tcp, connect_unix


@dataclass(frozen=True)
class UnixAddress:
    """A Unix domain socket on this host."""

    path: str

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class TcpAddress:
    """A TCP endpoint; ``tls``: the connection runs inside TLS with the application's keys."""

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{'tls' if self.tls else 'tcp'}:{self.host}:{self.port}"


Address = UnixAddress | TcpAddress


def parse_address(text: str) -> Address:
    """The typed form of ``text``; ``ValueError`` naming it when it is not an address."""
    scheme, _, rest = text.partition(":")
    if scheme == "unix" and rest:
        return UnixAddress(rest)
    if scheme in ("tcp", "tls"):
        host, _, port = rest.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return TcpAddress(host, int(port), tls=scheme == "tls")
    raise ValueError(
        f"not an address: {text!r} (expected unix:<path>, tcp:<host>:<port> or tls:<host>:<port>)"
    )


async def connect_address(
    address: Address | str,
    *,
    secret: bytes,
    identity: TlsIdentity | None = None,
    implementations: Sequence[Implementation] = (),
    settings: RpcSettings | None = None,
    on_one_way_error: Callable[[FunctionSpec, BaseException], None] | None = None,
    translate_closed: TranslateClosed | None = None,
) -> Connection:
    """Connect to ``address`` and finish the handshake.

    A ``tls:`` address needs ``identity`` (``ValueError`` without it): the client presents
    it and accepts only a server presenting the same certificate.
    """
    if isinstance(address, str):
        address = parse_address(address)
    if isinstance(address, UnixAddress):
        return await connect_unix(
            address.path, secret=secret, implementations=implementations, settings=settings,
            on_one_way_error=on_one_way_error, translate_closed=translate_closed,
        )
    if address.tls and identity is None:
        raise ValueError(f"connecting to {address} needs the application's TLS identity")
    return await connect_tcp(
        address.host, address.port, secret=secret, implementations=implementations,
        settings=settings, on_one_way_error=on_one_way_error, translate_closed=translate_closed,
        ssl=client_context(identity) if address.tls and identity is not None else None,
    )
