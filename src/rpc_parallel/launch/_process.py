"""A local worker process: launch, output forwarding, exit status, kill and reap."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import resource
import signal
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Protocol

from ..errors import SpawnError
from ._launcher import LaunchRequest
from .redirection import DevNull, FileAppend, FileTruncate, Forward, Redirection

_TAIL_LINES = 40
_TAIL_BYTES = 16384
_CHUNK = 65536


def _prefixed(block: bytes, prefix: bytes, at_line_start: bool) -> bytes:
    """``block`` with ``prefix`` after each newline but a final one, and at its start if it
    begins a line."""
    body = block.replace(b"\n", b"\n" + prefix)
    if block.endswith(b"\n"):
        body = body[: len(body) - len(prefix)]
    return prefix + body if at_line_start else body


def _write(target: IO[str], data: bytes, echo: bool) -> None:
    """Write ``data`` to ``target``'s binary buffer (the bytes as they are, valid UTF-8 or
    not); a text-only target gets them decoded with replacement characters."""
    if not echo:
        return
    try:
        target.flush()
        buffer = getattr(target, "buffer", None)
        if buffer is not None:
            buffer.write(data)
            buffer.flush()
        else:
            target.write(data.decode(errors="replace"))
            target.flush()
    except (OSError, ValueError):
        pass


async def forward(
    stream: asyncio.StreamReader,
    target: IO[str],
    prefix: bytes,
    tail: bytearray | None = None,
    echo: bool = True,
) -> None:
    """Copy ``stream`` to ``target`` byte for byte, with ``prefix`` at each line start;
    keep its last bytes in ``tail``; write nothing unless ``echo``.

    Reads in chunks, never by line: a line of any length arrives whole. Complete lines are
    written together (so that workers' lines do not interleave mid-line); a line longer than
    a chunk is written in pieces. A last line without a newline gets one.
    """
    pending = b""
    at_line_start = True
    while True:
        chunk = await stream.read(_CHUNK)
        if tail is not None and chunk:
            tail += chunk
            del tail[:-_TAIL_BYTES]
        if not chunk:
            if pending or not at_line_start:
                _write(target, _prefixed(pending + b"\n", prefix, at_line_start), echo)
            return
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) < _CHUNK:
            pending = data
            continue
        cut = cut or len(data)
        block, pending = data[:cut], data[cut:]
        _write(target, _prefixed(block, prefix, at_line_start), echo)
        at_line_start = block.endswith(b"\n")


def _file_tail(path: str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            size = file.tell()
            file.seek(max(0, size - limit))
            return file.read().decode(errors="replace")
    except OSError:
        return ""



def write_unless_closed(stdin: asyncio.StreamWriter, data: bytes) -> bool:
    """Write ``data`` to a child's stdin, unless the child has already closed it (it died at
    once: its exit status and stderr say why). ``False`` then. asyncio drops bytes written
    to a closed pipe and uvloop raises ``RuntimeError``; this is the same under both."""
    if stdin.is_closing():
        return False
    stdin.write(data)
    return True

class ChildProcess(Protocol):
    """What ``WorkerProcess`` needs of the process it owns: an
    ``asyncio.subprocess.Process``, or a worker forked by the fork server
    (``_fork_server.ForkedChild``)."""

    pid: int
    stdin: asyncio.StreamWriter | None
    stdout: asyncio.StreamReader | None
    stderr: asyncio.StreamReader | None

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, signal: int, /) -> None: ...

    def kill(self) -> None: ...


class WorkerProcess:
    """The OS process of a local worker, owned by the master that started it.

    Owns the tasks that forward its stdout/stderr; ``wait()`` reaps it, so no failed or
    finished worker is left as a zombie.
    """

    def __init__(
        self,
        process: ChildProcess,
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
        self._stderr_tail = bytearray()
        """The last bytes the worker wrote to the stderr pipe (bounded)."""
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
        tail: bytearray | None,
        echo: bool,
    ) -> None:
        await forward(stream, target, f"[{self.name}] ".encode(), tail, echo)

    def stderr_tail(self) -> str:
        text = self._stderr_tail.decode(errors="replace")
        text = "".join(text.splitlines(keepends=True)[-_TAIL_LINES:])
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
        self.kill_group()
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

    def kill_group(self) -> None:
        """SIGKILL what is left of the worker's own process group once the worker has
        exited (whatever killed it): what a ``Wrap`` prefix started must not outlive it,
        nor keep its pipes open."""
        if self.own_group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    async def kill_and_reap(self) -> int:
        self.kill()
        returncode = await self.process.wait()
        self.kill_group()
        await self.drain_output(timeout=1.0)
        self.close_pipes()
        return returncode

    async def stop(self, grace: float) -> int:
        """Wait up to ``grace`` seconds for a requested exit, then kill; always reaps. A
        stopped process (SIGSTOP) cannot exit by itself: it is killed without the grace."""
        if grace > 0 and self._is_stopped():
            grace = 0
        returncode = await self.wait(grace)
        if returncode is None:
            returncode = await self.kill_and_reap()
        self.close_pipes()
        return returncode

    def _is_stopped(self) -> bool:
        """True if the process is stopped (Linux: state T in /proc; elsewhere unknown)."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as file:
                state = file.read().rsplit(b")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state in (b"T", b"t")

    async def send(self, message: bytes) -> None:
        """Write one length-prefixed message to the worker's stdin."""
        stdin = self.stdin
        if stdin is None:
            return
        try:
            if write_unless_closed(stdin, len(message).to_bytes(4, "little") + message):
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
            f"cannot start worker {request.name}{what} ({argv[0]}): {_explain(error)}"
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


FDS_TO_START = 8
"""About how many file descriptors starting a worker takes (pipes, the exec error pipe)."""


def _explain(error: OSError) -> str:
    """``error``, said plainly when the process is out of file descriptors: the event loop's
    process spawning may report that as ``[Errno -1] Unknown error -1``."""
    if error.errno in (errno.EMFILE, errno.ENFILE) or _out_of_file_descriptors():
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return (f"out of file descriptors (EMFILE: Too many open files; this process may "
                f"have {soft} open, RLIMIT_NOFILE): {error}")
    return str(error)


def _out_of_file_descriptors() -> bool:
    """True if this process cannot open the few descriptors a worker's start takes."""
    opened: list[int] = []
    try:
        for _ in range(FDS_TO_START):
            opened.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as error:
        return error.errno in (errno.EMFILE, errno.ENFILE)
    finally:
        for fd in opened:
            os.close(fd)
    return False
