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
The names a worker process never needs (``Remote``, ``Slurm``, ``RemoteExecutable``, layer 7)
are imported when first used (``__getattr__`` below): every worker imports this package,
and on a machine with fewer cores than starting workers their CPU time is the spawn time
(docs/decisions/0029-lazy-imports.md).
"""

# isort: split
# First: a worker process pauses the garbage collector while it imports (``_start_up``).
from . import _start_up  # noqa: F401

# isort: split
from importlib import import_module
from typing import TYPE_CHECKING, Any

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
from .launch import DevNull, FileAppend, FileTruncate, Forward, Local, Wrap
from .launch._process import WorkerProcess
from .rpc import PipeReader, RpcSettings

# isort: split
# ``rp.rpc`` is the decorator and ``rpc_parallel.rpc`` the RPC layer (docs/decisions/0008).
# ``from .rpc import ...`` above imported the subpackage once (binding it here as ``rpc``);
# the decorators are bound last, so ``rp.rpc`` / ``rp.state`` are the decorators for the
# interpreter and type checkers alike. The layer stays in ``sys.modules``: ``from
# rpc_parallel.rpc import X`` reaches it. Nothing in the package imports it as a bare ``rpc``.
from ._functions import rpc, state

# isort: split
# The higher-level modules (DESIGN §6) and the launchers of other hosts: imported on first
# use (``__getattr__``); type checkers see them here.
if TYPE_CHECKING:
    from . import blocking, map_reduce
    from .launch.executable import RemoteExecutable
    from .launch.slurm import Slurm
    from .launch.ssh import Remote
    from .managed import Managed
    from .map_reduce import MapFunction, MapReduceFunction
    from .pool._pool import WorkerPool

_LAZY = {
    "Managed": ("managed", "Managed"),
    "MapFunction": ("map_reduce", "MapFunction"),
    "MapReduceFunction": ("map_reduce", "MapReduceFunction"),
    "Remote": ("launch.ssh", "Remote"),
    "RemoteExecutable": ("launch.executable", "RemoteExecutable"),
    "Slurm": ("launch.slurm", "Slurm"),
    "WorkerPool": ("pool._pool", "WorkerPool"),
    "blocking": ("blocking", None),
    "map_reduce": ("map_reduce", None),
}
"""Public name -> (module under this package, attribute of it; None: the module itself)."""


if not TYPE_CHECKING:  # (a module ``__getattr__`` would make type checkers accept any name)

    def __getattr__(name: str) -> Any:
        """Import a public name of ``_LAZY`` on first use; then it is a plain attribute."""
        try:
            module_name, attribute = _LAZY[name]
        except KeyError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
        module = import_module(f"{__name__}.{module_name}")
        value = module if attribute is None else getattr(module, attribute)
        globals()[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_LAZY})


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
