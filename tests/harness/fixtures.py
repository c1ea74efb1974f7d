"""Pytest fixtures over the harness; ``tests/conftest.py`` imports them for every test.

Each fixture starts real daemons and removes everything it made afterwards; where the
machine cannot (not root, a binary missing) the test is skipped with the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ._proc import Unavailable
from .bare_python import BarePython
from .netns import NamespaceHost
from .slurm import SlurmCluster
from .sshd import Sshd, SshHost


@pytest.fixture(scope="session")
def loopback_sshd() -> Iterator[SshHost]:
    """A real sshd on 127.0.0.1 and a free port; ``ssh -F host.config host.alias`` reaches it."""
    server = Sshd()
    try:
        host = server.start()
    except Unavailable as reason:
        pytest.skip(str(reason))
    try:
        yield host
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _namespace_host_session() -> Iterator[NamespaceHost]:
    host = NamespaceHost()
    try:
        host.start()
    except Unavailable as reason:
        pytest.skip(str(reason))
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def namespace_host(_namespace_host_session: NamespaceHost) -> Iterator[NamespaceHost]:
    """The session's namespace host; after a test that partitioned it, it is healed and its
    ssh master (which may have seen its connection stall) is closed."""
    try:
        yield _namespace_host_session
    finally:
        if _namespace_host_session.heal():
            _namespace_host_session.ssh_host.close_masters()


@pytest.fixture(scope="session")
def bare_python() -> Iterator[BarePython]:
    """A fresh ``python -m venv --without-pip``: ``bare_python.python`` has nothing installed."""
    with BarePython.create() as bare:
        yield bare


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """A single-node Slurm cluster; ``SLURM_CONF`` points at it for the session."""
    cluster = SlurmCluster()
    try:
        cluster.start()
    except Unavailable as reason:
        pytest.skip(str(reason))
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        cluster.stop()
