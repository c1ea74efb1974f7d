"""How workers start: the ``Launcher`` seam, its implementations, output redirections."""

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
    "Wrap",
    "check_launcher",
    "connect_back_of",
    "worker_paths",
]
