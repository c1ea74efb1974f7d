"""What this process is (master, worker, neither) and the application-wide settings."""

from __future__ import annotations

import enum
import os

from .rpc.settings import RpcSettings
from .rpc.tls import TlsIdentity

MASTER_HOST_VARIABLE = "RPC_PARALLEL_MASTER_HOST"
"""Environment variable: the address remote workers connect back to (NAT, multi-homed)."""


class State(enum.Enum):
    """Whether this process is a master, a worker, or neither (``State.get()``)."""

    MASTER = "master"
    WORKER = "worker"
    NEITHER = "neither"

    @classmethod
    def get(cls) -> State:
        return _process.state


class _Process:
    def __init__(self) -> None:
        self.state = State.NEITHER
        self.secret = os.urandom(32)
        self.settings: RpcSettings | None = None
        self.worker_name: str | None = None
        self.importing_for_worker = False
        self.identity: TlsIdentity | None = None
        """The application's TLS identity: made by a master when a remote worker first needs
        it, received by a worker in its configuration."""
        self.master_host_setting: str | None = os.environ.get(MASTER_HOST_VARIABLE) or None
        """In a master: the address remote workers connect back to, when set explicitly
        (``start_app(master_host=...)``, ``RPC_PARALLEL_MASTER_HOST``)."""
        self.master_host: str | None = None
        """In a worker: where it reaches the master's host (``@master`` in addresses)."""

    def tls_identity(self) -> TlsIdentity:
        """The application's TLS identity, made on first use (one per master process)."""
        if self.identity is None:
            self.identity = TlsIdentity.generate()
        return self.identity

    def rpc_settings(self) -> RpcSettings:
        if self.settings is None:
            self.settings = RpcSettings().with_environment()
        return self.settings


_process = _Process()


def process() -> _Process:
    """This process's application state (secret, settings, role)."""
    return _process
