"""The RPC layer's errors. Every error the library raises derives from :class:`Error`;
``rpc_parallel.errors`` re-exports these and adds the worker layer's own."""

from __future__ import annotations

from typing import Literal


class Error(Exception):
    """Base class of every rpc_parallel error."""


class ProtocolError(Error):
    """The peers disagree: wrong types, unknown function, version mismatch, bad frames."""


class MessageTooLarge(ProtocolError):
    """A message exceeds ``max_message_size``; refused before it is sent or read."""


class HandshakeError(ProtocolError):
    """The connection handshake failed: wrong magic or version, bad secret, timeout."""


CloseKind = Literal["closed_here", "closed_by_peer", "lost", "heartbeat_timeout", "protocol_error"]
"""Why a connection ended, as a value: this side closed it; the peer closed it (and said
why); the transport was lost; nothing was heard within ``heartbeat_timeout``; the peer broke
the protocol (including a failed or timed-out handshake)."""


class ConnectionClosed(Error):
    """The connection ended while a call needed it; ``reason`` says why (as text), ``kind``
    as a value."""

    def __init__(self, reason: str, kind: CloseKind = "closed_here") -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind: CloseKind = kind


class RemoteError(Error):
    """The remote implementation raised; carries its type, message and traceback text.

    ``remote_type`` is the qualified name of the exception's class (``module.Class``;
    builtins by bare name). When that class is importable where the call was made, the
    error is also an instance of it (a subclass of both; see ``rpc/_exceptions.py``), with
    the original's ``args`` and sendable attributes.
    """

    def __init__(
        self, function: str, remote_type: str, remote_message: str, remote_traceback: str
    ) -> None:
        super().__init__(f"{function} raised {remote_type}: {remote_message}")
        self.function = function
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        # From the fields, not ``args``: a rebuilt typed error's ``args`` are the original's.
        text = f"{self.function} raised {self.remote_type}: {self.remote_message}"
        if self.remote_traceback:
            text += "\n--- remote traceback ---\n" + self.remote_traceback.rstrip()
        return text
