"""Run a command on another host with the system ``ssh`` client.

The remote command is built from an argv (each word quoted for the remote POSIX shell), and
every secret or payload goes over ssh's standard input, never on a command line. Options the
user gives come first, so they win over our defaults (ssh keeps the first value of an option).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import SpawnError

SSH_FAILED = 255
"""The exit status with which ``ssh`` itself reports a failure (refused, unreachable, auth)."""


@dataclass(frozen=True)
class SshTarget:
    """A host reached with ``ssh [options] [-l user] [-p port] host command``."""

    host: str
    user: str | None = None
    port: int | None = None
    ssh_options: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise ValueError(f"not a host name: {self.host!r}")
        if self.user is not None and (not self.user or self.user.startswith("-")):
            raise ValueError(f"not a user name: {self.user!r}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"not a port: {self.port!r}")

    def argv(self, command: Sequence[str]) -> list[str]:
        """The local argv that runs ``command`` on the host."""
        return self.shell_argv(shlex.join(command))

    def shell_argv(self, line: str) -> list[str]:
        """The local argv that runs ``line``, one command line for the host's shell."""
        argv = ["ssh", *self.ssh_options, "-T", "-o", "BatchMode=yes"]
        if self.user is not None:
            argv += ["-l", self.user]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        return [*argv, "--", self.host, line]


@dataclass(frozen=True)
class DirectTarget:
    """This machine without ssh: runs the command as is (for tools and tests)."""

    host: str = "localhost"

    def argv(self, command: Sequence[str]) -> list[str]:
        return list(command)


Target = SshTarget | DirectTarget


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


def failure(target: Target, what: str, returncode: int | None, stderr: bytes) -> SpawnError:
    """A ``SpawnError`` naming the host and the cause, with ssh's own words when it failed."""
    text = stderr.decode(errors="replace").strip()
    last = text.splitlines()[-1] if text else "no message"
    if isinstance(target, SshTarget) and returncode == SSH_FAILED:
        cause = f"ssh failed: {last}"
    elif returncode is None:
        cause = "timed out"
    else:
        cause = f"exited with code {returncode}: {last}"
    return SpawnError(f"{what} on host {target.host}: {cause}", stderr_tail=text[-4000:])


async def start(target: Target, command: Sequence[str]) -> asyncio.subprocess.Process:
    argv = target.argv(command)
    try:
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as error:
        raise SpawnError(f"cannot run {argv[0]} for host {target.host}: {error}") from None


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill (if still running) and wait, so that no ssh process outlives its caller."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    await process.wait()


async def run(
    target: Target, command: Sequence[str], stdin: bytes, *, timeout: float, what: str
) -> Completed:
    """Run ``command`` on the host with ``stdin``; a timeout kills it and is a ``SpawnError``."""
    process = await start(target, command)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(stdin), timeout)
    except TimeoutError:
        await reap(process)
        raise failure(target, what, None, b"") from None
    finally:
        await reap(process)
    assert process.returncode is not None
    return Completed(process.returncode, stdout, stderr)
