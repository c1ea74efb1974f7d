"""Workers on other hosts over a real sshd: the loopback sshd and the namespace host."""

from __future__ import annotations

import os

import pytest

import rpc_parallel as rp

from ..harness.netns import NamespaceHost
from ..harness.sshd import SshHost
from ..workers.support import bounded
from ..workers.workers import Echo
from .test_network import every_kind


def remote(host: SshHost, **options: object) -> rp.Remote:
    return rp.Remote(host.alias, ssh_options=host.ssh_options, **options)  # type: ignore[arg-type]


async def test_spawn_over_the_loopback_sshd(loopback_sshd: SshHost) -> None:
    w = await bounded(Echo.spawn(100, how=remote(loopback_sshd)), 30, "remote spawn")
    try:
        await every_kind(w)
        assert w.pid != 0 and await w.run(Echo.pid) == w.pid
        assert any(part.startswith("tls:127.0.0.1:") for part in w.address.split())
    finally:
        await w.close()
    await rp.expert.shutdown_master()


async def test_spawn_into_the_namespace_host(namespace_host: NamespaceHost) -> None:
    w = await bounded(Echo.spawn(100, how=remote(namespace_host.ssh_host)), 30, "remote spawn")
    try:
        assert w.host == namespace_host.hostname
        assert w.pid in namespace_host.pids()
        await every_kind(w)
        assert f"tls:{namespace_host.address}:" in w.address
        assert w._link is not None
        assert w._link.peer_address[0] == namespace_host.address
    finally:
        await w.close()
    await rp.expert.shutdown_master()
