"""How and where a worker starts, and where its output goes."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

ShutdownOn = Literal["connection_closed", "heartbeat_timeout", "called_shutdown"]
SHUTDOWN_MODES: tuple[ShutdownOn, ...] = ("connection_closed", "heartbeat_timeout", "called_shutdown")


@dataclass(frozen=True)
class Local:
    """Start the worker on this machine with the master's interpreter and environment.

    ``python`` overrides the interpreter. ``command`` replaces the whole launch command
    (``[python, "-m", "rpc_parallel"]``) with your own entry point, which must call
    ``rp.expert.run_as_worker_if_requested()`` first thing.
    """

    python: str = field(default_factory=lambda: sys.executable)
    command: Sequence[str] | None = None


@dataclass(frozen=True)
class Remote:
    """Start the worker on another host over OpenSSH (not available in this release)."""

    host: str
    user: str | None = None
    port: int | None = None
    python: str = "python3"
    ssh_options: Sequence[str] = ()
    executable: object = None


@dataclass(frozen=True)
class Wrap:
    """Launch through a prefix command (``nice``, ``taskset``, ``numactl``, ``srun`` ...)."""

    prefix_argv: Sequence[str]
    how: Local | Remote = field(default_factory=Local)

    def __post_init__(self) -> None:
        if isinstance(self.prefix_argv, str) or not all(
            isinstance(a, str) for a in self.prefix_argv
        ):
            raise TypeError("Wrap(prefix_argv) takes a sequence of strings, e.g. ['nice', '-n', '5']")


How = Local | Remote | Wrap


@dataclass(frozen=True)
class Forward:
    """Copy each line of the worker's output to the master's, prefixed with the worker's name."""


@dataclass(frozen=True)
class DevNull:
    """Discard the output."""


@dataclass(frozen=True)
class FileAppend:
    """Append the output to a file."""

    path: str | os.PathLike[str]


@dataclass(frozen=True)
class FileTruncate:
    """Write the output to a file, emptied first."""

    path: str | os.PathLike[str]


Redirection = Forward | DevNull | FileAppend | FileTruncate
