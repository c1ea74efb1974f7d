"""IPv6 between hosts: the namespace link in IPv6 (unique local addresses, a blackhole route
for the /64, partitions that drop it too), and a remote worker whose ssh session, link back
to the master and handles all run over it, in TLS."""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from collections.abc import Iterator

import pytest

import rpc_parallel as rp

from ..harness import _proc
from ..harness.netns import NamespaceHost
from ..workers.support import bounded
from ..workers.workers import Echo
from .test_ssh import remote, tls_only

_PROBE = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except TimeoutError:
    print("timeout")
except OSError as error:
    print(f"error {error}")
"""


def _needs_ipv6(host: NamespaceHost) -> None:
    if not host.address6:
        pytest.skip(f"no IPv6 on the namespace link: {host.ipv6_missing}")


def _probe_from_namespace(host: NamespaceHost, address: str, port: int, timeout: float) -> str:
    """Connect from inside the namespace: "connected", "timeout" or "error ..."."""
    result = host.run([sys.executable, "-c", _PROBE, address, str(port), str(timeout)],
                      timeout=timeout + 20)
    return result.stdout.strip()


def _routes6() -> list[dict[str, str]]:
    routes: list[dict[str, str]] = json.loads(
        _proc.run(["ip", "-j", "-6", "route", "show", "table", "all"]).stdout)
    return routes


@pytest.fixture
def listener6(namespace_host: NamespaceHost) -> Iterator[socket.socket]:
    """A TCP listener on our IPv6 side of the veth."""
    _needs_ipv6(namespace_host)
    with socket.socket(socket.AF_INET6) as server:
        server.bind((namespace_host.host_address6, 0))
        server.listen(16)
        yield server


def test_the_ipv6_link_works_stays_on_the_machine_and_partitions(
    namespace_host: NamespaceHost, listener6: socket.socket
) -> None:
    host = namespace_host
    assert host.subnet6 is not None and ipaddress.ip_address(host.address6) in host.subnet6
    assert host.subnet6.network_address.packed[0] == 0xFD  # a unique local address
    blackholes = [r for r in _routes6()
                  if r.get("dst") == str(host.subnet6) and r.get("type") == "blackhole"]
    assert blackholes, "no blackhole route for the IPv6 subnet"
    port = listener6.getsockname()[1]
    assert _probe_from_namespace(host, host.host_address6, port, 5) == "connected"
    host.partition()
    try:
        assert _probe_from_namespace(host, host.host_address6, port, 2) == "timeout"
        assert not _proc.tcp_open(host.address6, 22, timeout=1)
    finally:
        host.heal()
    assert _probe_from_namespace(host, host.host_address6, port, 5) == "connected"


def test_ipv6_teardown_leaves_nothing() -> None:
    host = NamespaceHost()
    try:
        host.start()
    except _proc.Unavailable as error:
        pytest.skip(str(error))
    try:
        _needs_ipv6(host)
        subnet6 = str(host.subnet6)
        assert host.ssh_host6.ssh("hostname").stdout.strip() == host.hostname
    finally:
        host.stop()
    assert not [r for r in _routes6() if r.get("dst") == subnet6]


def _on_ipv6(connection: object, address: str) -> None:
    """``connection`` (an RPC connection) is TLS over an IPv6 socket, its peer at ``address``."""
    transport = connection._transport  # type: ignore[attr-defined]
    assert transport is not None
    sock = transport.get_extra_info("socket")
    assert sock.family == socket.AF_INET6, sock
    peer = transport.get_extra_info("peername")[0]
    assert peer == address, f"{peer} is not {address}"  # not an IPv4-mapped address
    assert transport.get_extra_info("ssl_object").version() == "TLSv1.3"


async def test_connect_back_over_ipv6_on_the_namespace_link(
    namespace_host: NamespaceHost,
) -> None:
    """ssh reaches the namespace host at its IPv6 address, so ``SSH_CONNECTION`` there has
    IPv6 addresses: the remote worker connects back to the master over IPv6 (TLS), advertises
    its own IPv6 address, and handles passed between it and a local worker connect over
    IPv6 too."""
    _needs_ipv6(namespace_host)
    far = await bounded(Echo.spawn(1000, how=remote(namespace_host.ssh_host6)), 30,
                        "remote spawn over IPv6")
    near = await bounded(Echo.spawn(2000), 30, "local spawn")
    try:
        assert far.host == namespace_host.hostname
        assert far._link is not None
        _on_ipv6(far._link, namespace_host.address6)  # the connect-back
        assert f"tls:{namespace_host.address6}:" in far.address
        assert await far.run(Echo.add, 1, 2, scale=3) == 1009
        # A handle each way: the remote worker reaches the local one at the master's IPv6
        # address (as it sees it); the master and the local worker reach the remote one at
        # its own.
        assert await far.run(Echo.add_through, tls_only(near), 1) == (2011, "state:peer")
        assert await near.run(Echo.add_through, tls_only(far), 2) == (1012, "state:peer")
        async with await tls_only(far).connect("master") as connection:
            assert await connection.run(Echo.whoami) == "state:master"
            _on_ipv6(connection._connection, namespace_host.address6)
    finally:
        await near.close()
        await far.close()
    await rp.expert.shutdown_master()
