"""The typed async RPC layer: framing, authentication, function menus, five call kinds,
flow control and heartbeats over TCP or Unix sockets. It knows nothing of workers."""

from ._serving import Implementation
from .connection import Connection, current_connection
from .errors import (
    ConnectionClosed,
    Error,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
)
from .functions import FunctionSpec, Kind, Parameter, register_type, type_name
from .loop import new_event_loop, run, uvloop_available
from .settings import SETTINGS_ENVIRONMENT_VARIABLE, RpcSettings
from .streams import PipeReader
from .tls import TlsIdentity, client_context, server_context
from .transport import Server, connect_tcp, connect_unix, serve_tcp, serve_unix

__all__ = [
    "SETTINGS_ENVIRONMENT_VARIABLE",
    "Connection",
    "ConnectionClosed",
    "Error",
    "FunctionSpec",
    "HandshakeError",
    "Implementation",
    "Kind",
    "MessageTooLarge",
    "Parameter",
    "PipeReader",
    "ProtocolError",
    "RemoteError",
    "RpcSettings",
    "Server",
    "TlsIdentity",
    "client_context",
    "connect_tcp",
    "connect_unix",
    "current_connection",
    "new_event_loop",
    "register_type",
    "run",
    "serve_tcp",
    "serve_unix",
    "server_context",
    "type_name",
    "uvloop_available",
]
