"""The application's network: how workers on other hosts and the master reach each other.

Nothing here listens until a launcher with ``needs_network`` spawns: then the master starts
a TCP server with TLS (``Master.address(remote=True)``), bound to ``LISTEN_HOST``, beside its
Unix socket. Every worker spawned from then on gets a ``Network`` record in its
configuration (the TLS identity and where to find the master) and serves its functions on
TCP + TLS too, so that a handle passed to a worker on another host can be connected to.

Addresses are texts (the wire form of ``rpc.transport.Address``) and may list alternatives separated by spaces
(``unix:/tmp/.../worker.sock tls:10.0.0.7:40123``): a peer uses the first that works from
where it runs. The host ``@master`` stands for "the master's host, as this process reaches
it" (``127.0.0.1`` on the master's machine, the connect-back host on another): a worker on
the master's machine cannot know the master's address as a remote host sees it, but every
remote worker knows it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence

from ._builtins import Network
from ._state import process
from .launch._launcher import ConnectBack
from .rpc.tls import TlsIdentity
from .rpc.transport import EVERY_INTERFACE, Address, Tcp, Unix, parse_address

MASTER_HOST = "@master"
"""In an address: the master's host as the process using the address reaches it."""
LISTEN_HOST = EVERY_INTERFACE
"""Where TCP servers bind once a remote worker needs them: every interface (IPv6 and IPv4,
one port)."""
LOCAL = ConnectBack(master_host=("127.0.0.1",), worker_host=(MASTER_HOST,))
"""A worker on the master's machine: its link is a Unix socket; it reaches the master's host
at loopback, and peers reach it where they reach the master."""


def resolve(sources: Sequence[str], environ: Mapping[str, str] | None = None) -> str | None:
    """The first host the ``sources`` give (see ``ConnectBack``), or None."""
    environ = os.environ if environ is None else environ
    for source in sources:
        if not source.startswith("env:"):
            if source:
                return source
            continue
        name, _, field = source[4:].partition(":")
        fields = environ.get(name, "").split()
        index = int(field) if field.isdigit() else 0
        if index < len(fields):
            return fields[index]
    return None


def network_config(identity: TlsIdentity, connect_back: ConnectBack, remote: bool) -> Network:
    """The ``Network`` record of a new worker (``remote``: it may run on another host)."""
    explicit = process().master_host_setting
    if not remote:
        connect_back = LOCAL
    master_sources = [*connect_back.master_host, socket.gethostname()]
    if explicit is not None and remote:
        master_sources.insert(0, explicit)
    return Network(
        identity=identity, master_host=master_sources,
        worker_host=list(connect_back.worker_host), listen_host=LISTEN_HOST,
    )


def join(network: Network) -> None:
    """In a worker: record the identity and the master's host from its ``Network``."""
    state = process()
    state.identity = network.identity
    state.master_host = resolve(network.master_host) or "127.0.0.1"


def advertised_host(network: Network) -> str:
    """The host a worker puts in its own TLS address."""
    return resolve(network.worker_host) or socket.gethostname()


def alternatives(address: str) -> list[Address]:
    """The addresses ``address`` lists that this process can try, in order: Unix sockets
    that exist here, TCP addresses with ``@master`` replaced."""
    found: list[Address] = []
    for text in address.split():
        parsed = parse_address(text)
        if isinstance(parsed, Unix):
            if os.path.exists(parsed.path):
                found.append(parsed)
        elif parsed.host == MASTER_HOST:
            found.append(Tcp(master_host(), parsed.port, parsed.tls))
        else:
            found.append(parsed)
    return found


def master_host() -> str:
    """Where this process reaches the master's host."""
    return process().master_host or "127.0.0.1"
