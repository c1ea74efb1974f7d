"""Every error the library raises derives from :class:`Error`."""

from __future__ import annotations

from .rpc.errors import (
    ConnectionClosed,
    Error,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
)

__all__ = [
    "ConnectionClosed",
    "Error",
    "HandshakeError",
    "MessageTooLarge",
    "ProtocolError",
    "RemoteError",
    "SpawnError",
    "WorkerDied",
    "WorkerFailure",
]


def _with_stderr_tail(text: str, stderr_tail: str) -> str:
    if stderr_tail:
        text += "\n--- worker stderr (tail) ---\n" + stderr_tail.rstrip()
    return text


class WorkerDied(ConnectionClosed):
    """The worker process died or stopped answering while a call was in flight."""

    def __init__(
        self,
        reason: str,
        *,
        worker: str = "",
        function: str | None = None,
        exit_code: int | None = None,
        signal: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(reason)
        self.worker = worker
        self.function = function
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        return _with_stderr_tail(self.reason, self.stderr_tail)


class SpawnError(Error):
    """A worker could not start; carries the cause and the tail of its stderr."""

    def __init__(self, reason: str, *, stderr_tail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        return _with_stderr_tail(self.reason, self.stderr_tail)


class WorkerFailure(Error):
    """A worker failed outside any call (background task, one-way call) or died.

    Passed to ``on_failure``; the worker exits after reporting it.
    """

    def __init__(
        self,
        worker: str,
        message: str,
        *,
        remote_type: str = "",
        remote_traceback: str = "",
        exit_code: int | None = None,
        signal: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(message if message.startswith("worker ") else f"worker {worker}: {message}")
        self.worker = worker
        self.message = message
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback
        self.exit_code = exit_code
        self.signal = signal
        self.stderr_tail = stderr_tail
