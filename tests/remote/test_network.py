"""The network master, without ssh: a launcher that starts workers on this machine but says
``needs_network``, so every connection takes the TCP + TLS path used between hosts.

Loopback only: the launcher tells the workers to find the master at 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from dataclasses import dataclass

import pytest

import rpc_parallel as rp
from rpc_parallel._master import current_master
from rpc_parallel._state import process
from rpc_parallel.launch import ConnectBack

from ..workers.support import bounded, gone
from ..workers.workers import Echo
from .support import listening_tcp, wildcard_ports

LOOPBACK = ConnectBack(master_host=("127.0.0.1",), worker_host=("127.0.0.1",))


@dataclass(frozen=True)
class LoopbackNetwork(rp.Local):
    """A local launch that behaves as a remote one: the master listens on TCP + TLS."""

    connect_back: ConnectBack = LOOPBACK

    @property
    def needs_network(self) -> bool:
        return True


def _tls_port(address: str) -> int:
    tls = [part for part in address.split() if part.startswith("tls:")]
    assert len(tls) == 1, address
    return int(tls[0].rsplit(":", 1)[1])


async def test_nothing_listens_on_tcp_until_a_remote_worker_is_spawned() -> None:
    async with await Echo.spawn(1) as local:
        assert await local.run(Echo.add, 1, 1) == 3
        assert listening_tcp(os.getpid()) == []
        assert listening_tcp(local.pid) == []
        assert local.address.startswith("unix:") and " " not in local.address
    await rp.expert.shutdown_master()


async def test_tls_link_every_kind_and_nothing_left_listening() -> None:
    before = set(listening_tcp(os.getpid()))
    w = await bounded(Echo.spawn(100, how=LoopbackNetwork()), 30, "spawn")
    try:
        master = current_master()
        assert master.network_server is not None
        master_port = master.network_server.address[1]  # type: ignore[index]
        assert master_port in wildcard_ports(os.getpid())
        # The link is TLS 1.3 with the application's certificate.
        link = w._link
        assert link is not None
        ssl_object = link._transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
        assert isinstance(ssl_object, ssl.SSLObject)
        assert ssl_object.version() == "TLSv1.3"
        identity = process().identity
        assert identity is not None
        assert ssl.DER_cert_to_PEM_cert(ssl_object.getpeercert(True)).encode().strip() \
            == identity.certificate.strip()
        # The worker serves on TLS too, and advertises it.
        worker_port = _tls_port(w.address)
        assert worker_port in wildcard_ports(w.pid)
        assert f"tls:127.0.0.1:{worker_port}" in w.address.split()

        await every_kind(w)
        # A connection of its own, over the worker's TLS server (not the link).
        tls_only = w.address.split()[1]
        from rpc_parallel._handle import WorkerHandle

        other: WorkerHandle[Echo] = WorkerHandle(
            worker_id=w.id, name=w.name, pid=w.pid, host=w.host, address=tls_only,
            worker_class=w.worker_class,
        )
        async with await other.connect("direct") as connection:
            assert await connection.run(Echo.whoami) == "state:direct"
            assert await connection.run(Echo.add, 1, 2) == 103
        await other.close()
        pid = w.pid
    finally:
        await w.close()
    await gone(pid)
    await rp.expert.shutdown_master()
    assert set(listening_tcp(os.getpid())) == before


async def every_kind(w: rp.WorkerHandle[Echo]) -> None:
    assert await w.run(Echo.add, 1, 2, scale=3) == 109
    assert await w.run(Echo.add_in_thread, 1) == (101, False)
    assert [x async for x in await w.run(Echo.count, 3)] == [100, 101, 102]
    initial, updates = await w.run(Echo.counter, 7)
    assert initial == 107
    assert [u async for u in updates] == ["update 8", "update 9", "update 10"]
    await w.run(Echo.remember, "a")
    await w.run(Echo.remember, "b")
    # One-way calls run as tasks of their own: an rpc that arrives in the same read (TLS
    # records coalesce) may be answered first, so poll.
    for _ in range(500):
        if await w.run(Echo.recall) == ["a", "b"]:
            break
    assert await w.run(Echo.recall) == ["a", "b"]

    async def values():  # type: ignore[no-untyped-def]
        for i in range(1000):
            yield i

    assert await w.run(Echo.total, 2, values()) == 2 * sum(range(1000))
    big = await w.run(Echo.count, 20000)
    assert sum([x async for x in big]) == sum(range(100, 20100))


async def test_handles_between_a_network_worker_and_a_local_one() -> None:
    """A local worker spawned once the network is up listens on TLS too; each worker
    connects to the other (the local one's TLS address is ``@master``-relative)."""
    remote = await bounded(Echo.spawn(1000, how=LoopbackNetwork()), 30, "remote spawn")
    local = await bounded(Echo.spawn(2000), 30, "local spawn")
    try:
        assert local.address.startswith("unix:")
        assert any(p.startswith("tls:@master:") for p in local.address.split())
        assert await remote.run(Echo.add_through, local, 1) == (2011, "state:peer")
        assert await local.run(Echo.add_through, remote, 2) == (1012, "state:peer")
        pids = [remote.pid, local.pid]
    finally:
        await local.close()
        await remote.close()
    for pid in pids:
        await gone(pid)
    await rp.expert.shutdown_master()
    assert listening_tcp(os.getpid()) == []


def test_connect_back_sources() -> None:
    from rpc_parallel._network import resolve

    environ = {"SSH_CONNECTION": "10.1.2.3 50022 10.1.2.4 22", "EMPTY": ""}
    assert resolve(["env:SSH_CONNECTION"], environ) == "10.1.2.3"
    assert resolve(["env:SSH_CONNECTION:2"], environ) == "10.1.2.4"
    assert resolve(["env:MISSING", "env:EMPTY", "env:SSH_CONNECTION:7", "login1"], environ) \
        == "login1"
    assert resolve(["env:MISSING"], environ) is None


def test_an_explicit_master_host_comes_first_for_remote_workers_only() -> None:
    from rpc_parallel._network import network_config

    state = process()
    saved = state.master_host_setting
    state.master_host_setting = "203.0.113.7"
    try:
        identity = state.tls_identity()
        remote = network_config(identity, ConnectBack(master_host=("env:SSH_CONNECTION",)), True)
        assert remote.master_host[:2] == ["203.0.113.7", "env:SSH_CONNECTION"]
        local = network_config(identity, ConnectBack(), False)
        assert local.master_host[0] == "127.0.0.1" and local.worker_host == ["@master"]
    finally:
        state.master_host_setting = saved


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class LoopbackIpv6(rp.Local):
    connect_back: ConnectBack = ConnectBack(master_host=("::1",), worker_host=("::1",))  # noqa: RUF009

    @property
    def needs_network(self) -> bool:
        return True


async def test_workers_connect_back_over_ipv6_too() -> None:
    """The master listens on one dual-stack socket: a host that reached it over IPv6
    (``SSH_CONNECTION`` with an IPv6 address) connects back on the same port."""
    if not _has_ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    w = await bounded(Echo.spawn(5, how=LoopbackIpv6()), 30, "spawn")
    try:
        assert w._link is not None and w._link.peer_address[0] == "::1"
        assert f"tls:::1:{_tls_port(w.address)}" in w.address.split()
        assert await w.run(Echo.add, 1, 1) == 7
    finally:
        await w.close()
    await rp.expert.shutdown_master()


async def test_the_masters_tls_server_refuses_strangers_before_dispatch() -> None:
    """Plaintext, another application's certificate, the right certificate without the
    secret: each is refused, and no registration reaches the master."""
    from rpc_parallel.rpc import HandshakeError, TlsIdentity, client_context, connect_tcp

    from ..rpc.tls_client import ADD

    w = await bounded(Echo.spawn(0, how=LoopbackNetwork()), 30, "spawn")
    try:
        master = current_master()
        server = master.network_server
        assert server is not None
        port = server.address[1]  # type: ignore[index]
        identity = process().identity
        assert identity is not None
        attempts = [
            {"secret": process().secret},  # plaintext
            {"secret": process().secret, "ssl": client_context(TlsIdentity.generate())},
            {"secret": b"not the secret", "ssl": client_context(identity)},
        ]
        for options in attempts:
            with pytest.raises((HandshakeError, ssl.SSLError, ConnectionError)):
                client = await bounded(connect_tcp("127.0.0.1", port, **options), 15, "connect")
                try:
                    await client.call(ADD, 1, 2)
                finally:
                    client.close()
        assert master.pending == {}
        # Only the worker's link is left on the master's TLS server.
        for _ in range(500):
            if len(server.connections) == 1:
                break
            await asyncio.sleep(0.01)
        assert server.connections == {w._link}
    finally:
        await w.close()
    await rp.expert.shutdown_master()


def test_the_master_host_can_be_set_from_the_environment() -> None:
    import subprocess
    import sys

    program = ("import rpc_parallel as rp\n"
               "from rpc_parallel._state import process\n"
               "print(process().master_host_setting)\n")
    env = {**os.environ, "RPC_PARALLEL_MASTER_HOST": "10.1.0.5"}
    done = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "10.1.0.5"
