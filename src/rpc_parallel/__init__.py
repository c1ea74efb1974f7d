"""rpc_parallel: typed parallel workers on a typed async RPC layer.

A Python form of Jane Street's Rpc_parallel. See ``docs/guide.md``.
"""

from .app import expert, start_app
from .builtins import LogRecord
from .errors import (
    ConnectionClosed,
    Error,
    HandshakeError,
    MessageTooLarge,
    ProtocolError,
    RemoteError,
    SpawnError,
    WorkerDied,
    WorkerFailure,
)
from .functions import (
    Function,
    OneWay,
    Pipe,
    ReversePipe,
    Rpc,
    StateFunction,
    one_way,
    pipe,
    reverse_pipe,
    rpc,
    state,
)
from .rpc import PipeReader, RpcSettings
from .spawn import DevNull, FileAppend, FileTruncate, Forward, Local, Remote, Wrap
from .spawn.process import WorkerProcess
from .state import State
from .worker import Connection, Worker, WorkerHandle

__all__ = [
    "Connection",
    "ConnectionClosed",
    "DevNull",
    "Error",
    "FileAppend",
    "FileTruncate",
    "Forward",
    "Function",
    "HandshakeError",
    "Local",
    "LogRecord",
    "MessageTooLarge",
    "OneWay",
    "Pipe",
    "PipeReader",
    "ProtocolError",
    "Remote",
    "RemoteError",
    "ReversePipe",
    "Rpc",
    "RpcSettings",
    "SpawnError",
    "State",
    "StateFunction",
    "Worker",
    "WorkerDied",
    "WorkerFailure",
    "WorkerHandle",
    "WorkerProcess",
    "Wrap",
    "expert",
    "one_way",
    "pipe",
    "reverse_pipe",
    "rpc",
    "start_app",
    "state",
]
