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
    executable: object | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or self.host.startswith("-") or any(
            c.isspace() for c in self.host
        ):
            raise ValueError(f"rp.Remote: not a host name: {self.host!r}")
        if self.user is not None and (not self.user or self.user.startswith("-")):
            raise ValueError(f"rp.Remote: not a user name: {self.user!r}")
        if self.port is not None and not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise ValueError(f"rp.Remote: not a port: {self.port!r}")
        if isinstance(self.ssh_options, str) or not all(
            isinstance(o, str) for o in self.ssh_options
        ):
            raise TypeError("rp.Remote(ssh_options=...) takes a sequence of strings, e.g. "
                            "['-F', 'cluster.cfg']")

    @property
    def needs_network(self) -> bool:
        return True

    @property
    def can_use_prestarted(self) -> bool:
        return False

    @property
    def connect_back(self) -> ConnectBack:
        return SSH_CONNECT_BACK

    def ssh_argv(self, remote_command: str) -> list[str]:
        """The local argv that runs ``remote_command`` (one shell command line) on the host."""
        argv = ["ssh", *self.ssh_options, "-T", "-o", "BatchMode=yes"]
        if self.user is not None:
            argv += ["-l", self.user]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        return [*argv, "--", self.host, remote_command]

    def worker_command(self, name: str) -> list[str]:
        python = self.python or sys.executable
        return [python, "-m", "rpc_parallel", "worker", name, "child-of",
                f"{os.getpid()}@{socket.gethostname()}"]

    async def launch(self, request: LaunchRequest) -> LaunchedProcess:
        environment = {"PYTHONPATH": _package_root(), **(request.env or {})}
        if request.env and "PYTHONPATH" in request.env:
            environment["PYTHONPATH"] = f"{_package_root()}:{request.env['PYTHONPATH']}"
        remote = remote_command(request.command, environment, request.cwd,
                                request.redirect_stdout)
        stdout = subprocess.PIPE if isinstance(request.redirect_stdout, Forward) else (
            subprocess.DEVNULL
        )
        return await _process.start_process(
            self.ssh_argv(remote), request, env=None, cwd=None, stdout=stdout,
            what=f" on host {self.host} (over ssh)",
        )


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


def _package_root() -> str:
    """The directory this ``rpc_parallel`` is imported from, so that the worker on a host
    sharing the master's files runs the same code (ssh passes no environment)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
