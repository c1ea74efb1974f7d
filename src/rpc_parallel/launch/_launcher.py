"""The launcher seam: how a worker process comes to exist.

``Worker.spawn(how=...)`` takes any value that implements :class:`Launcher`. The spawn
pipeline asks it for the worker's command, has it start a process, and supervises what it
returns through :class:`LaunchedProcess`; it never looks at which launcher it has. Today's
launchers are ``Local`` (a child process of this one), ``Wrap`` (a prefix command in front of
another launcher), ``Remote`` (another host, over ssh: ``ssh.py``) and ``Slurm`` (a job step
or a job: ``slurm.py``); the fork server (``_fork_server.py``) serves a default ``Local``
spawn when ``can_use_prestarted`` says it may. Another one (another scheduler) is one new
module with one class implementing this protocol.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .redirection import Redirection


@dataclass(frozen=True)
class ConnectBack:
    """How a worker on another host finds the master, and what it advertises for itself.

    A launcher whose ``needs_network`` is true may have a ``connect_back`` attribute of this
    type (``connect_back_of`` reads it; without one, the defaults below apply). Each field
    is a sequence of *sources*, tried in order on the worker's host:

    * ``"env:NAME"``: the first whitespace-separated field of the environment variable
      ``NAME`` (``"env:SSH_CONNECTION"``: the master's address as the worker's host sees it);
    * ``"env:NAME:N"``: its field ``N`` (``"env:SSH_CONNECTION:2"``: the worker host's own
      address on the link the master used);
    * anything else: a host name or address as is (``"10.0.0.5"``, ``"login1"``).

    ``master_host``: where the worker connects back. An explicit setting
    (``start_app(master_host=...)``, ``RPC_PARALLEL_MASTER_HOST``) comes first, then these,
    then the master's host name. ``worker_host``: the host the worker advertises for its
    own server (other workers and the master connect there); the worker's host name last.
    """

    master_host: Sequence[str] = ()
    worker_host: Sequence[str] = ()


def worker_paths(
    how: object, sys_path: list[str], main_path: str | None
) -> tuple[list[str], str | None]:
    """The import path and main script path a worker of ``how`` gets: the master's, unless
    the launcher has a ``worker_paths`` method of this signature saying where they are on its
    target (a shipped bundle puts them elsewhere)."""
    method = getattr(how, "worker_paths", None)
    if method is None:
        return sys_path, main_path
    paths: tuple[list[str], str | None] = method(sys_path, main_path)
    return paths


def connect_back_of(how: object) -> ConnectBack:
    """The ``ConnectBack`` of a launcher, or the defaults when it declares none."""
    value = getattr(how, "connect_back", None)
    return value if isinstance(value, ConnectBack) else ConnectBack()


@dataclass(frozen=True)
class LaunchRequest:
    """What the spawn asks a launcher for: one worker process.

    ``command`` is the argv to run on the target (what ``Launcher.worker_command`` gave, with
    any ``Wrap`` prefixes in front). ``env`` extends the target's environment; ``cwd`` is on
    the target. ``new_session``: start the process in a session (and process group) of its
    own, so that killing the worker kills what a wrapper started too; false for
    ``spawn_in_foreground``, which keeps it in the caller's group.
    """

    name: str
    command: Sequence[str]
    env: Mapping[str, str] | None
    cwd: str | None
    redirect_stdout: Redirection
    redirect_stderr: Redirection
    new_session: bool


class LaunchedProcess(Protocol):
    """A started worker process, as the spawn and the supervisor use it.

    Until its configuration arrives, the worker reads length-prefixed messages from its stdin
    (``send``); closing stdin (``close_pipes``) before that makes it exit. ``wait`` and
    ``kill_and_reap`` reap it: nothing a launcher starts may be left as a zombie.
    """

    name: str
    """The worker's name."""

    pid: int
    """The process id on the host where it runs (the launcher's own child for ssh/srun)."""

    redirect_stderr: Redirection
    """Where its stderr goes once it has registered (for ``stderr_tail``)."""

    @property
    def returncode(self) -> int | None:
        """The exit status once it has exited (negative: the signal that killed it)."""
        ...

    async def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the exit status (None on timeout), then drain its output."""
        ...

    async def send(self, message: bytes) -> None:
        """Write one length-prefixed message to its stdin; ignore a process already dead."""
        ...

    def kill(self) -> None:
        """SIGKILL it (with its process group when it has one of its own)."""
        ...

    async def kill_and_reap(self) -> int:
        """Kill it, reap it, close its pipes; its exit status."""
        ...

    async def stop(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for a requested exit, then kill; always reaps."""
        ...

    def stderr_tail(self) -> str:
        """The last lines it wrote to stderr (for ``SpawnError`` and ``WorkerDied``)."""
        ...

    async def drain_output(self, timeout: float) -> None:
        """Let output forwarding reach end of file, bounded by ``timeout``."""
        ...

    def close_pipes(self) -> None:
        """Close its stdin and stop forwarding its output."""
        ...


@runtime_checkable
class Launcher(Protocol):
    """How and where a worker process starts: the value of ``spawn(how=...)``.

    For the next implementer:

    * ``worker_command(name)`` is the argv that runs the worker *on the target*: for a local
      launcher ``[python, "-m", "rpc_parallel", "worker", name, "child-of", ...]``; for an
      ssh launcher the same with the remote interpreter. ``Wrap(prefix, how=inner)`` puts
      its prefix in front of ``inner.worker_command(name)``, so the prefix runs on the target
      side of any inner launcher (on the remote host for ssh). Raise ``SpawnError`` for a
      launcher that cannot start a worker, saying why.
    * ``launch(request)`` starts ``request.command`` (a local launcher runs it; ssh would
      run ``ssh host -- <quoted command>``; Slurm ``srun ...``) and returns the process.
      Secrets never go on a command line: the configuration (with the secret) is sent
      afterwards through ``LaunchedProcess.send``. Raise ``SpawnError`` naming what failed.
    * ``needs_network``: whether the worker may run on another host. The master's address
      choice consults it in one place (``Master.address``): a Unix socket when false; TCP
      with TLS when true (the master then starts its TCP server, and the worker's
      configuration carries the TLS identity). Such a launcher may also have a
      ``connect_back: ConnectBack`` attribute saying how its workers find the master, and
      a ``worker_paths(sys_path, main_path)`` method when the worker's code is not at the
      master's paths on the target (``worker_paths`` below).
    * ``can_use_prestarted``: whether a warm process — a fork of the master's fork server
      (``_prestart``, ``_fork_server``) — may serve this spawn instead of a new one; true
      only when the launch would be exactly the master's default local launch (the
      master's interpreter, no prefix, this host).
    """

    @property
    def needs_network(self) -> bool: ...

    @property
    def can_use_prestarted(self) -> bool: ...

    def worker_command(self, name: str) -> list[str]: ...

    async def launch(self, request: LaunchRequest) -> LaunchedProcess: ...


@runtime_checkable
class ExplainsEnd(Protocol):
    """A ``LaunchedProcess`` that can say why it ended in its scheduler's words (a Slurm job
    or step: ``Slurm job 12 TIMEOUT``); ``SpawnError`` and ``WorkerDied`` carry the text."""

    def explain_end(self) -> str | None:
        """Why it ended, once it has (None: nothing beyond its exit status)."""
        ...


def end_explanation(process: object) -> str:
    """``": <why>"`` for a process that explains its end, else ``""``."""
    if isinstance(process, ExplainsEnd):
        text = process.explain_end()
        if text:
            return f": {text}"
    return ""


CONFIG_FILE_VARIABLE = "RPC_PARALLEL_CONFIG_FILE"
"""For a launcher whose worker has no stdin from the master (a Slurm batch job): set in the
worker's environment to the path of a 0600 file; ``LaunchedProcess.send`` writes the
configuration there and the worker reads it and deletes the file as it starts, instead of
reading its stdin (whose end of file then means nothing)."""
