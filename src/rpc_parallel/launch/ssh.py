"""``rp.Remote``: workers on other hosts, started with the system's OpenSSH client.

The local ``ssh`` process is the worker's ``LaunchedProcess``: its stdin is the worker's
stdin (the configuration, with the secret and the TLS identity, travels there, never on a
command line), its stderr carries the worker's start-up output and ssh's own messages, and
its exit means the worker is gone (ssh exits with 255 when the connection fails or is cut).
The worker connects back to the master over TCP + TLS (``_network``): it finds the master at
the first field of ``SSH_CONNECTION`` (the address its ssh session came from) unless the
master's host is set explicitly, and advertises its own server at the third field (its own
address on that link).

Remote command: ``cd <cwd> && exec env VAR=... <prefix...> <python> -m rpc_parallel worker
<name> child-of <pid>@<host> [>stdout-file]``, each word quoted for a POSIX shell on the host.
With ``executable=`` (an ``rp.RemoteExecutable``), ``<python> -m rpc_parallel`` is the
bundle's isolated bootstrap stub instead, and the bootstrap itself goes first on stdin: it
checks every shipped file against the manifest whose hash the master holds, then runs the
worker from the bundle (decision 0014).
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
from asyncio import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass

from . import _process
from ._launcher import ConnectBack, LaunchedProcess, LaunchRequest
from ._ssh import SshTarget
from .executable import RemoteExecutable
from .redirection import DevNull, FileAppend, FileTruncate, Forward, Redirection, to_wire

SSH_CONNECT_BACK = ConnectBack(
    master_host=("env:SSH_CONNECTION",), worker_host=("env:SSH_CONNECTION:2",)
)
"""A worker started by ssh: the master is where the session came from (``SSH_CONNECTION``
field 0), the worker is where the session arrived (field 2)."""


@dataclass(frozen=True)
class Remote:
    """Start the worker on ``host`` with the system ``ssh`` client.

    ``~/.ssh/config``, agents, jump hosts and ``known_hosts`` apply as for any ``ssh``
    command; ``ssh_options`` are passed first (e.g. ``["-F", "cluster.cfg"]``), so they win
    over this launcher's defaults (``-T``, ``-o BatchMode=yes``: nothing can answer a
    password prompt). ``user`` and ``port`` become ``-l`` and ``-p``.

    Without ``executable`` the host is assumed to share the master's files (a cluster file
    system, the same image): the worker runs the master's interpreter (``sys.executable``)
    with the master's ``rpc_parallel`` and import path, unless ``python`` names another
    interpreter on the host. With ``executable`` (an ``rp.RemoteExecutable`` on the host),
    the worker runs from that bundle, checked before each spawn.
    """

    host: str
    _: KW_ONLY
    user: str | None = None
    port: int | None = None
    python: str | None = None
    ssh_options: Sequence[str] = ()
    executable: RemoteExecutable | None = None

    def __post_init__(self) -> None:
        if isinstance(self.ssh_options, str) or not all(
            isinstance(o, str) for o in self.ssh_options
        ):
            raise TypeError("rp.Remote(ssh_options=...) takes a sequence of strings, e.g. "
                            "['-F', 'cluster.cfg']")
        if not isinstance(self.host, str) or (
            self.port is not None and not isinstance(self.port, int)
        ):
            raise TypeError(f"rp.Remote: host must be a string and port an int, got "
                            f"{self.host!r}, {self.port!r}")
        try:
            self.target  # noqa: B018 - checks the host, user and port
        except ValueError as error:
            raise ValueError(f"rp.Remote: {error}") from None
        if self.executable is not None:
            if not isinstance(self.executable, RemoteExecutable):
                raise TypeError(f"rp.Remote(executable=...) takes an rp.RemoteExecutable, got "
                                f"{self.executable!r}")
            if self.executable.host != self.host:
                raise ValueError(f"rp.Remote({self.host!r}): the executable was copied to host "
                                 f"{self.executable.host!r}")

    @property
    def needs_network(self) -> bool:
        return True

    @property
    def can_use_prestarted(self) -> bool:
        return False

    @property
    def connect_back(self) -> ConnectBack:
        return SSH_CONNECT_BACK

    @property
    def target(self) -> SshTarget:
        """How ``ssh`` reaches the host (shared with ``RemoteExecutable``)."""
        return SshTarget(self.host, self.user, self.port, tuple(self.ssh_options))

    def worker_paths(
        self, sys_path: list[str], main_path: str | None
    ) -> tuple[list[str], str | None]:
        """Without a bundle: the master's import path, with ``''`` (the master's working
        directory) made absolute, since the worker starts in its login directory on the
        host. With one: the bundle's import path and its copy of the main script."""
        if self.executable is None:
            return [entry or os.getcwd() for entry in sys_path], main_path
        return self.executable.worker_paths(main_path, f"on host {self.host}")

    def worker_command(self, name: str) -> list[str]:
        argv = _worker_argv(name)
        if self.executable is not None:
            # The stub ignores its arguments (the bundle's bootstrap, on stdin, gets the
            # worker's argv); they are there for ``ps``, as for any worker.
            return [*self.executable.python_argv(self.python), *argv]
        return [self.python or sys.executable, "-m", "rpc_parallel", *argv]

    async def launch(self, request: LaunchRequest) -> LaunchedProcess:
        environment = dict(request.env or {})
        if self.executable is None:  # Run the master's rpc_parallel, from the shared files.
            root = _package_root()
            given = environment.get("PYTHONPATH")
            environment["PYTHONPATH"] = root if not given else f"{root}:{given}"
        remote = remote_command(request.command, environment, request.cwd,
                                request.redirect_stdout)
        stdout = subprocess.PIPE if isinstance(request.redirect_stdout, Forward) else (
            subprocess.DEVNULL
        )
        worker = await _process.start_process(
            self.target.shell_argv(remote), request, env=None, cwd=None, stdout=stdout,
            what=f" on host {self.host} (over ssh)",
        )
        if self.executable is not None and worker.stdin is not None:
            # First the bootstrap (verify the bundle, then run the worker from it); the
            # worker's configuration follows on the same stdin.
            _process.write_unless_closed(
                worker.stdin, self.executable.boot_input(_worker_argv(request.name)))
        return worker


def remote_command(
    command: Sequence[str],
    env: Mapping[str, str],
    cwd: str | None,
    redirect_stdout: Redirection,
) -> str:
    """One POSIX shell command line that runs ``command`` with ``env`` in ``cwd`` on the
    host, its stdout as ``redirect_stdout`` says (a file there, or back through ssh)."""
    for key in env:
        if not key.isidentifier():
            raise ValueError(f"environment variable name {key!r} cannot be passed to a remote "
                             "worker")
    words = ["exec", "env", *(f"{k}={v}" for k, v in env.items()),
             "RPC_PARALLEL_WORKER=1", *command]
    line = shlex.join(words)
    if isinstance(redirect_stdout, DevNull):
        line += " >/dev/null"
    elif isinstance(redirect_stdout, FileAppend | FileTruncate):
        wire = to_wire(redirect_stdout, "redirect_stdout")
        line += f" {'>>' if wire.mode == 'append' else '>'}{shlex.quote(wire.path)}"
    if cwd is not None:
        line = f"cd {shlex.quote(cwd)} && {line}"
    return line


def _worker_argv(name: str) -> list[str]:
    """``rpc_parallel``'s arguments for a worker (what ``ps`` shows after the interpreter)."""
    return ["worker", name, "child-of", f"{os.getpid()}@{socket.gethostname()}"]


def _package_root() -> str:
    """The directory this ``rpc_parallel`` is imported from, so that the worker on a host
    sharing the master's files runs the same code (ssh passes no environment)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
