"""How workers start: local processes, prefix wrappers, supervision and redirection."""

from .options import (
    SHUTDOWN_MODES,
    DevNull,
    FileAppend,
    FileTruncate,
    Forward,
    How,
    Local,
    Redirection,
    Remote,
    ShutdownOn,
    Wrap,
)

__all__ = [
    "SHUTDOWN_MODES",
    "DevNull",
    "FileAppend",
    "FileTruncate",
    "Forward",
    "How",
    "Local",
    "Redirection",
    "Remote",
    "ShutdownOn",
    "Wrap",
]
