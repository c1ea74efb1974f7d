"""rpc_parallel: typed parallel workers on a typed async RPC layer.

A Python form of Jane Street's Rpc_parallel. See ``docs/guide.md``; the map of the modules
is in ``docs/architecture.md``.

Layering, bottom up (a module imports only from layers below it, and never in a cycle --
tests/test_structure.py checks both):

1. ``rpc`` -- the typed async RPC layer (its own errors, settings, transport). Imports
   nothing else of this package.
2. ``errors``, ``_state``, ``_builtins``, ``_functions``, ``_threads`` -- errors, this
   process's role and settings, the wire records between master and workers, typed function
   descriptors, the threads of plain-``def`` functions.
3. ``launch`` -- how a worker process is started (``Local``, ``Wrap``, redirections).
4. ``_master``, ``_serving`` -- the per-loop master server; what a worker serves besides
   its functions.
5. ``_worker`` -- ``Worker``, ``WorkerHandle``, ``Connection``, the spawn and supervision.
6. ``_worker_main``, ``_app`` -- the worker process; ``start_app`` / ``expert``.
7. ``blocking``, ``map_reduce``, ``managed``, ``pool`` -- built on the layers above.

This module re-exports the public names; everything with a leading underscore is internal.
"""

from ._app import expert, start_app
from ._builtins import LogRecord
from ._functions import (
    Function,
    OneWay,
    Pipe,
    ReversePipe,
    Rpc,
    Runnable,
    StateFunction,
    one_way,
    pipe,
    reverse_pipe,
)
from ._handle import Connection, WorkerHandle
from ._state import State
from ._worker_type import Worker
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
from .launch import DevNull, FileAppend, FileTruncate, Forward, Local, Remote, Slurm, Wrap
from .launch._process import WorkerProcess
from .launch.executable import RemoteExecutable
from .rpc import PipeReader, RpcSettings

# isort: split
# ``rp.rpc`` is the decorator and ``rpc_parallel.rpc`` the RPC layer (docs/decisions/0008).
# ``from .rpc import ...`` above imported the subpackage once (binding it here as ``rpc``);
# the decorators are bound last, so ``rp.rpc`` / ``rp.state`` are the decorators for the
# interpreter and type checkers alike. The layer stays in ``sys.modules``: ``from
# rpc_parallel.rpc import X`` reaches it. Nothing in the package imports it as a bare ``rpc``.
from ._functions import rpc, state

# isort: split
# The higher-level modules (DESIGN §6) are built on the layers above.
from . import blocking, map_reduce
from .managed import Managed
from .map_reduce import MapFunction, MapReduceFunction
from .pool._pool import WorkerPool

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
    "RemoteExecutable",
    "ReversePipe",
    "Rpc",
    "RpcSettings",
    "Runnable",
    "Slurm",
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
    "blocking",
    "expert",
    "map_reduce",
    "one_way",
    "pipe",
    "reverse_pipe",
    "rpc",
    "start_app",
    "state",
]
