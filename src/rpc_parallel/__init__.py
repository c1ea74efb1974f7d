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
)
from .rpc import PipeReader, RpcSettings
from .spawn import DevNull, FileAppend, FileTruncate, Forward, Local, Remote, Wrap
from .spawn.process import WorkerProcess
from .state import State
from .worker import Connection, Worker, WorkerHandle

# isort: split
# ``rpc`` and ``state`` are also submodules of this package, and ``from .rpc import ...`` /
# ``from .state import ...`` above bind the submodules under those names for type checkers
# (pyright then sees ``rp.rpc`` as a module). Binding the decorators last makes ``rp.rpc`` and
# ``rp.state`` the decorators for checkers, as they are at run time.
from .functions import rpc, state

# isort: split
# The higher-level modules (DESIGN §6) are built on the public names above.
from . import map_reduce
from .managed import Managed
from .map_reduce import MapFunction, MapReduceFunction
from .pool._pool import WorkerPool


# ``rp.rpc`` is the decorator (the contract's name) and shadows the ``rpc_parallel.rpc``
# subpackage as an attribute of this package. ``from rpc_parallel.rpc import X`` is the way to
# reach the RPC layer; the layer's names are also set on the decorator, so code that reaches
# it as ``rpc_parallel.rpc.X`` keeps working at run time.
def _expose_rpc_layer() -> None:
    import importlib

    layer = importlib.import_module("rpc_parallel.rpc")
    for name in layer.__all__:
        setattr(rpc, name, getattr(layer, name))


_expose_rpc_layer()

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
    "Managed",
    "MapFunction",
    "MapReduceFunction",
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
    "WorkerPool",
    "WorkerProcess",
    "Wrap",
    "expert",
    "map_reduce",
    "one_way",
    "pipe",
    "reverse_pipe",
    "rpc",
    "start_app",
    "state",
]
