"""How workers start: the ``Launcher`` seam, its implementations (``Local``, ``Wrap``,
``Remote``, ``Slurm``), output redirections.

``Remote`` and ``Slurm`` (with ``SlurmAllocation``, ``slurm_allocation``) are imported on
first use: every worker process imports this package, and few start workers elsewhere."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._launcher import (
    ConnectBack,
    LaunchedProcess,
    Launcher,
    LaunchRequest,
    connect_back_of,
    worker_paths,
)
from .options import Local, Wrap, check_launcher
from .redirection import DevNull, FileAppend, FileTruncate, Forward, Redirection

if TYPE_CHECKING:
    from .slurm import Slurm, SlurmAllocation, slurm_allocation
    from .ssh import Remote

_LAZY = {"Remote": "ssh", "Slurm": "slurm", "SlurmAllocation": "slurm",
         "slurm_allocation": "slurm"}
"""Name -> the module of this package that defines it."""

if not TYPE_CHECKING:  # (a module ``__getattr__`` would make type checkers accept any name)

    def __getattr__(name: str) -> Any:
        """Import a name of ``_LAZY`` on first use; then it is a plain attribute."""
        if name not in _LAZY:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


__all__ = [
    "ConnectBack",
    "DevNull",
    "FileAppend",
    "FileTruncate",
    "Forward",
    "LaunchRequest",
    "LaunchedProcess",
    "Launcher",
    "Local",
    "Redirection",
    "Remote",
    "Slurm",
    "SlurmAllocation",
    "Wrap",
    "check_launcher",
    "connect_back_of",
    "slurm_allocation",
    "worker_paths",
]
