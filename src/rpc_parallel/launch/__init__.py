"""How workers start: the ``Launcher`` seam, its implementations (``Local``, ``Wrap``,
``Remote``, ``Slurm``), output redirections."""

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
from .slurm import Slurm, SlurmAllocation, slurm_allocation
from .ssh import Remote

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
