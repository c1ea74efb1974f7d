"""Functions every master and every worker serve, and the messages between them."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from .launch.redirection import Redirect
from .rpc import FunctionSpec
from .rpc.frames import ErrorInfo
from .rpc.settings import RpcSettings
from .rpc.tls import TlsIdentity

ShutdownOn = Literal["connection_closed", "heartbeat_timeout", "called_shutdown"]
"""When a worker exits (``spawn(shutdown_on=...)``); travels as this literal on the wire."""
SHUTDOWN_MODES: tuple[ShutdownOn, ...] = ("connection_closed", "heartbeat_timeout", "called_shutdown")


class Network(msgspec.Struct, frozen=True, kw_only=True):
    """A worker's part in the application's network (TCP + TLS between hosts).

    Sent only once the master listens on TCP (a launcher with ``needs_network`` spawned).
    ``master_host`` and ``worker_host`` are *sources*, tried in order: ``env:NAME`` (the
    first field of that environment variable), ``env:NAME:N`` (its field N), or a host
    name or address as is. ``worker_host`` is what the worker advertises for its own
    server; ``@master`` there means "the master's host, as each peer reaches it" (a worker
    on the master's machine). See ``_network``.
    """

    identity: TlsIdentity
    master_host: list[str]
    worker_host: list[str]
    listen_host: str


class WorkerConfig(msgspec.Struct, frozen=True, kw_only=True, tag="config"):
    """What a new worker process reads from its stdin before anything else."""

    worker_id: str
    name: str
    module: str
    qualname: str
    main_path: str | None
    sys_path: list[str]
    secret: bytes
    master_address: str
    settings: RpcSettings
    init_arg: bytes
    shutdown_on: ShutdownOn
    redirect_stderr: Redirect
    umask: int | None
    parent: str
    network: Network | None = None
    """Present once the master listens on TCP + TLS; ``master_address`` is then ``tls:``
    with the host ``@master`` when the worker connects back over the network."""
    argv: list[str] = []
    """The master's ``sys.argv``: the worker's own, so that a main script's top-level
    argument parsing sees the same arguments in every process."""


class Registration(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    pid: int
    host: str
    address: str
    error: ErrorInfo | None = None
    failed_in: str = "init_worker_state"
    """Where ``error`` was raised: ``init_worker_state``, or ``__init__`` (the worker class
    could not be constructed)."""


class LogRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A ``logging`` record of a worker, as a subscriber receives it."""

    worker: str
    logger: str
    level: int
    level_name: str
    message: str
    created: float


CONFIG_ENCODER = msgspec.msgpack.Encoder()
CONFIG_DECODER = msgspec.msgpack.Decoder(WorkerConfig)

# Served by the master, called by its workers over their link.
REGISTER = FunctionSpec(
    "rpc_parallel.register", kind="rpc", parameters=[("registration", Registration)]
)
# Called by a worker once it has started and connected, just before ``init_worker_state``
# (on a connection of its own, closed at once: a blocking ``init_worker_state`` must not
# starve a link's heartbeats). Ends the ``connection_timeout`` phase of the spawn.
INITIALIZING = FunctionSpec(
    "rpc_parallel.initializing", kind="rpc", parameters=[("worker_id", str)]
)
# An rpc, not a one-way call: the worker exits right after reporting, and a one-way call
# followed at once by the end of the connection may never be served.
WORKER_FAILED = FunctionSpec(
    "rpc_parallel.worker_failed", kind="rpc", parameters=[("report", ErrorInfo)]
)

# Served by every worker.
INIT_CONNECTION = FunctionSpec("rpc_parallel.init_connection", kind="rpc", parameters=[("arg", Any)])
SHUTDOWN = FunctionSpec("rpc_parallel.shutdown", kind="rpc")
CLOSE_SERVER = FunctionSpec("rpc_parallel.close_server", kind="rpc")
# A state function: its initial answer (the worker's name) means the subscription is active.
SUBSCRIBE_LOGS = FunctionSpec(
    "rpc_parallel.subscribe_logs", kind="state", response=str, item=LogRecord
)
