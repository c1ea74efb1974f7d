"""How workers start: the ``Launcher`` seam, its implementations, output redirections."""

from ._launcher import LaunchedProcess, Launcher, LaunchRequest
from .options import Local, Remote, Wrap, check_launcher
from .redirection import DevNull, FileAppend, FileTruncate, Forward, Redirection

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
    "Wrap",
    "check_launcher",
]
