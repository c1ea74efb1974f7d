"""What this process is (master, worker, neither) and the application-wide settings."""

from __future__ import annotations

import enum
import os

from .rpc.settings import RpcSettings


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

    def rpc_settings(self) -> RpcSettings:
        if self.settings is None:
            self.settings = RpcSettings().with_environment()
        return self.settings


_process = _Process()


def process() -> _Process:
    """This process's application state (secret, settings, role)."""
    return _process
