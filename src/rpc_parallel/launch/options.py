"""The local launchers: ``Local`` and ``Wrap`` (see ``_launcher``; ``Remote`` is in ``ssh``,
``Slurm`` in ``slurm``)."""

from __future__ import annotations

import os
import socket
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import _process
from ._launcher import (
    ConnectBack,
    LaunchedProcess,
    Launcher,
    LaunchRequest,
    connect_back_of,
    worker_paths,
)


@dataclass(frozen=True)
class Local:
    """Start the worker on this machine with the master's interpreter and environment.

    ``python`` overrides the interpreter. ``command`` replaces the whole launch command
    (``[python, "-m", "rpc_parallel"]``) with your own entry point, which must call
    ``rp.expert.run_as_worker_if_requested()`` first thing.
    """

    python: str = field(default_factory=lambda: sys.executable)
    command: Sequence[str] | None = None

    @property
    def needs_network(self) -> bool:
        return False

    @property
    def can_use_prestarted(self) -> bool:
        return self == Local()

    def worker_command(self, name: str) -> list[str]:
        base = list(self.command) if self.command is not None else [self.python, "-m", "rpc_parallel"]
        return [*base, "worker", name, "child-of", f"{os.getpid()}@{socket.gethostname()}"]

    async def launch(self, request: LaunchRequest) -> LaunchedProcess:
        return await _process.start(request)


@dataclass(frozen=True)
class Wrap:
    """Launch through a prefix command (``nice``, ``taskset``, ``numactl``, ``srun`` ...).

    The prefix runs on the target side of the inner launcher ``how``.
    """

    prefix_argv: Sequence[str]
    how: Launcher = field(default_factory=Local)

    def __post_init__(self) -> None:
        if isinstance(self.prefix_argv, str) or not all(
            isinstance(a, str) for a in self.prefix_argv
        ):
            raise TypeError("Wrap(prefix_argv) takes a sequence of strings, e.g. ['nice', '-n', '5']")
        check_launcher(self.how, "Wrap(how=...)")

    @property
    def needs_network(self) -> bool:
        return self.how.needs_network

    @property
    def can_use_prestarted(self) -> bool:
        return False

    @property
    def connect_back(self) -> ConnectBack:
        return connect_back_of(self.how)

    def worker_paths(
        self, sys_path: list[str], main_path: str | None
    ) -> tuple[list[str], str | None]:
        return worker_paths(self.how, sys_path, main_path)

    def worker_command(self, name: str) -> list[str]:
        return [*self.prefix_argv, *self.how.worker_command(name)]

    async def launch(self, request: LaunchRequest) -> LaunchedProcess:
        return await self.how.launch(request)


_LAUNCHER_TYPES: weakref.WeakSet[type] = weakref.WeakSet()
"""Types found to implement ``Launcher`` (an ``isinstance`` against a runtime protocol
inspects every member each time; the members are the type's)."""


def check_launcher(how: object, what: str = "how") -> None:
    """``TypeError`` unless ``how`` implements the ``Launcher`` protocol."""
    if type(how) in _LAUNCHER_TYPES:
        return
    if isinstance(how, Launcher):
        _LAUNCHER_TYPES.add(type(how))
    else:
        raise TypeError(
            f"{what} must be rp.Local(), rp.Remote(...), rp.Slurm(...), rp.Wrap(...) or another launcher "
            f"(see rpc_parallel.launch.Launcher), got {how!r}"
        )
