"""A local worker process: launch, output forwarding, exit status, kill and reap."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from typing import IO

from ..errors import SpawnError
from ._launcher import LaunchRequest
from .redirection import DevNull, FileAppend, FileTruncate, Forward, Redirection

_TAIL_LINES = 40


def _file_tail(path: str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - limit))
            return file.read().decode(errors="replace")
    except OSError:
        return ""


class WorkerProcess:
    """The OS process of a local worker, owned by the master that started it.

    Owns the tasks that forward its stdout/stderr; ``wait()`` reaps it, so no failed or
    finished worker is left as a zombie.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        name: str,
        redirect_stdout: Redirection,
        redirect_stderr: Redirection,
        own_group: bool = False,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.own_group = own_group
        """Started in a new session: the process group ``pid`` is the worker's alone."""
        self.name = name
        self._stderr_tail: deque[str] = deque(maxlen=_TAIL_LINES)
        self.redirect_stderr = redirect_stderr
        self._tasks: list[asyncio.Task[None]] = []
        if process.stderr is not None:
            # Always echoed: with another redirection the worker moves its stderr away from
            # this pipe once it has registered, so what arrives here is what it wrote while
            # starting (an import error, a crash), which must never be silent.
            self._tasks.append(asyncio.ensure_future(
                self._forward(process.stderr, sys.stderr, self._stderr_tail, True)
            ))
        if process.stdout is not None:
            self._tasks.append(asyncio.ensure_future(
                self._forward(process.stdout, sys.stdout, None,
                              isinstance(redirect_stdout, Forward))
            ))
        self.stdin = process.stdin
        self.where = ""
        """Where it runs, for messages: ``""`` here, ``" on <host> (over ssh)"`` ..."""

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def _forward(
        self,
        stream: asyncio.StreamReader,
        target: IO[str],
        tail: deque[str] | None,
        echo: bool,
    ) -> None:
        prefix = f"[{self.name}] "
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                line = await stream.read(65536)
            if not line:
                return
            text = line.decode(errors="replace")
            if not self.accept_line(text, tail is not None):
                continue
            if tail is not None:
                tail.append(text)
            if echo:
                try:
                    target.write(prefix + text if text.endswith("\n") else prefix + text + "\n")
                    target.flush()
                except (OSError, ValueError):
                    pass

    def accept_line(self, text: str, from_stderr: bool) -> bool:
        """Whether a line of its output is the worker's (forwarded, kept in the tail); a
        launcher's own chatter on the same pipe (``srun -v``) is not."""
        return True

    def stderr_tail(self) -> str:
        text = "".join(self._stderr_tail)
        if isinstance(self.redirect_stderr, FileAppend | FileTruncate):
            text += _file_tail(os.fspath(self.redirect_stderr.path))
        return text[-8000:]

    async def wait(self, timeout: float | None = None) -> int | None:
        """The exit status (negative: killed by that signal), or None on timeout."""
        try:
            if timeout is None:
                returncode = await self.process.wait()
            else:
                returncode = await asyncio.wait_for(asyncio.shield(self.process.wait()), timeout)
        except TimeoutError:
            return None
        await self.drain_output(timeout=1.0)
        return returncode

    async def drain_output(self, timeout: float) -> None:
        """Let the forwarders reach end of file (bounded: a grandchild may hold the pipe)."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the worker; a detached one with its whole process group, so that what a
        wrapper (``rp.Wrap``) started before exec'ing the worker is not left behind."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            if self.own_group:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)

    async def kill_and_reap(self) -> int:
        self.kill()
        returncode = await self.process.wait()
        await self.drain_output(timeout=1.0)
        self.close_pipes()
        return returncode

    async def stop(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for a requested exit, then kill; always reaps."""
        returncode = await self.wait(grace)
        if returncode is None:
            returncode = await self.kill_and_reap()
        self.close_pipes()
        return returncode

    async def send(self, message: bytes) -> None:
        """Write one length-prefixed message to the worker's stdin."""
        stdin = self.stdin
        if stdin is None:
            return
        if stdin.is_closing():
            return  # It died at once; the caller sees the exit and the stderr tail.
        try:
            stdin.write(len(message).to_bytes(4, "little") + message)
            await stdin.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass  # (uvloop raises RuntimeError for a pipe closed under the write.)

    def close_pipes(self) -> None:
        if self.stdin is not None and not self.stdin.is_closing():
            self.stdin.close()
        for task in self._tasks:
            if not task.done():
                task.cancel()


async def start(
    request: LaunchRequest, kind: type[WorkerProcess] = WorkerProcess
) -> WorkerProcess:
    """Start ``request.command`` as a child process; it waits for its configuration on stdin
    (``WorkerProcess.send``). ``kind``: a subclass for a launcher that needs more of its
    process (the Slurm step reads ``srun``'s own lines)."""
    environment = dict(os.environ)
    if request.env is not None:
        environment.update(request.env)
    environment["RPC_PARALLEL_WORKER"] = "1"
    stdout, stdout_file = _open_stdout(request.redirect_stdout, request.name)
    try:
        return await start_process(request.command, request, env=environment, cwd=request.cwd,
                                   stdout=stdout, kind=kind)
    finally:
        if stdout_file is not None:
            stdout_file.close()


async def start_process(
    argv: Sequence[str],
    request: LaunchRequest,
    *,
    env: Mapping[str, str] | None,
    cwd: str | None,
    stdout: int | IO[bytes],
    what: str = "",
    kind: type[WorkerProcess] = WorkerProcess,
) -> WorkerProcess:
    """Start ``argv`` here for ``request`` (stdin and stderr pipes; ``stdout`` as given):
    the worker itself, or the client that starts it elsewhere (ssh, srun). ``what`` is
    added to the worker's name in errors (``" on host (over ssh)"``)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=stdout,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=request.new_session,
        )
    except OSError as error:
        raise SpawnError(
            f"cannot start worker {request.name}{what} ({argv[0]}): {error}"
        ) from None
    worker = kind(process, request.name, request.redirect_stdout,
                  request.redirect_stderr, own_group=request.new_session)
    worker.where = what
    return worker


def _open_stdout(redirect: Redirection, name: str) -> tuple[int | IO[bytes], IO[bytes] | None]:
    """The child's stdout for ``redirect``, and the file to close once it has started."""
    if isinstance(redirect, Forward):
        return asyncio.subprocess.PIPE, None
    if isinstance(redirect, DevNull):
        return asyncio.subprocess.DEVNULL, None
    mode = "ab" if isinstance(redirect, FileAppend) else "wb"
    try:
        file = open(os.fspath(redirect.path), mode)  # noqa: SIM115
    except OSError as error:
        raise SpawnError(f"cannot open the stdout file of worker {name}: {error}") from None
    return file, file
