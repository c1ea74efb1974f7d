"""How workers start: the ``Launcher`` seam, its implementations (``Local``, ``Wrap``,
``Remote``, ``Slurm``), output redirections."""

from ._launcher import LaunchedProcess, Launcher, LaunchRequest
from .options import Local, Remote, Wrap, check_launcher
from .redirection import DevNull, FileAppend, FileTruncate, Forward, Redirection
from .slurm import Slurm, SlurmAllocation, slurm_allocation

__all__ = [
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
    "slurm_allocation",
]
