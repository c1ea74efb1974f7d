"""The fork server, the master's side: a template process that forks local workers.

A ``ForkServer`` is one template (``_fork_template``) for one (interpreter, import path,
main script, environment, working directory). ``fork`` makes the three pipes of a new
worker, sends their child ends to the template with the request, and returns the worker as
a ``ForkedWorker`` — a ``WorkerProcess`` over a ``ForkedChild`` instead of an
``asyncio.subprocess.Process``, so output forwarding, the stderr tail, kill and stop are the
code every local worker uses. The template is the worker's parent: it reaps it and reports
its exit status on its reply pipe; if the template itself dies, its children die with it
(``PR_SET_PDEATHSIG``) and the master, which holds a pidfd of each, reports them killed.

``fork`` returns None when the template cannot fork this worker (it refused: a fork failed,
an import started a thread; or it is dead); the caller then starts the worker the ordinary
way (decision 0021).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

import msgspec

from ..errors import SpawnError
from ._fork_template import ForkRequest, Setup
from ._process import WorkerProcess, forward
from .redirection import DevNull, FileAppend, Forward, Redirection

logger = logging.getLogger("rpc_parallel")

_READY_TIMEOUT = 60.0
"""How long a new template may take to start (an interpreter and rpc_parallel's imports)."""


class ForkedChild:
    """A process the template forked, as ``WorkerProcess`` uses a child process: its pid,
    pipes, exit status (from the template's report) and kill."""

    def __init__(self, pid: int, stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader,
                 transports: list[asyncio.BaseTransport]) -> None:
        self.pid = pid
        self.stdin: asyncio.StreamWriter | None = stdin
        self.stdout = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self._transports = transports
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.lost: str | None = None
        """Why the exit status is not the template's report (the template died)."""
        self.pidfd: int | None = None
        with contextlib.suppress(OSError):
            self.pidfd = os.pidfd_open(pid)

    @property
    def returncode(self) -> int | None:
        return self._exit.result() if self._exit.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    def send_signal(self, signal_number: int, /) -> None:
        """Signal it while it has not been reaped (by its pidfd: never another process)."""
        if self._exit.done():
            return
        with contextlib.suppress(ProcessLookupError, OSError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal_number)
            else:
                os.kill(self.pid, signal_number)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def exited(self, returncode: int) -> None:
        if not self._exit.done():
            self._exit.set_result(returncode)
        self._close_pidfd()

    async def orphaned(self) -> None:
        """The template died before reporting our exit: we were killed with it (the death
        signal); wait (bounded) until the pidfd says so, then report SIGKILL."""
        if self._exit.done():
            return
        self.lost = "killed with its fork server, which died"
        self.kill()
        pidfd = self.pidfd
        if pidfd is not None:
            loop = asyncio.get_running_loop()
            gone: asyncio.Future[None] = loop.create_future()
            loop.add_reader(pidfd, _set_done, gone)
            try:
                await asyncio.wait_for(gone, timeout=5.0)
            except TimeoutError:
                pass
            finally:
                loop.remove_reader(pidfd)
        self.exited(-signal.SIGKILL)

    def release(self) -> None:
        """Close the master's ends of the pipes."""
        for transport in self._transports:
            transport.close()
        self._close_pidfd()

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


class ForkedWorker(WorkerProcess):
    """A worker forked by the fork server: a ``WorkerProcess`` over a ``ForkedChild``."""

    child: ForkedChild

    def close_pipes(self) -> None:
        super().close_pipes()
        if self.child.returncode is not None:
            self.child.release()

    def explain_end(self) -> str | None:
        return self.child.lost


class ForkServer:
    """One template process: forks workers on request, reports their exits."""

    def __init__(self, process: asyncio.subprocess.Process, control: socket.socket) -> None:
        self.process = process
        self.control = control
        self.pid = process.pid
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[str, Any]]] = {}
        self._children: dict[int, ForkedChild] = {}
        self._unadopted: dict[int, int | None] = {}
        """Forked, not yet adopted by ``fork``: the exit status if it came first."""
        self._orphans: set[asyncio.Future[None]] = set()
        self.tainted = False
        """An import started a thread in the template: it forks no more (it still reaps
        and reports the workers it forked)."""
        self._ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """True once the template has set itself up; False if it exited first."""
        self._reader = asyncio.ensure_future(self._read_replies())
        self._stderr = asyncio.ensure_future(self._forward_stderr())

    @classmethod
    async def start(cls, python: str, sys_path: list[str], argv: list[str],
                    cwd: str, env: Mapping[str, str]) -> ForkServer:
        """Start a template; returns once it has set itself up (``OSError`` /
        ``TimeoutError`` / ``EOFError`` if it cannot)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await asyncio.create_subprocess_exec(
                python, "-m", "rpc_parallel", "fork-server", "child-of",
                f"{os.getpid()}@{socket.gethostname()}",
                stdin=theirs.fileno(), stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, cwd=cwd, env=dict(env),
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        server = cls(process, ours)
        try:
            ours.send(msgspec.msgpack.encode(Setup(sys_path=sys_path, argv=argv)))
            if not await asyncio.wait_for(asyncio.shield(server._ready), _READY_TIMEOUT):
                raise EOFError("the fork server exited while starting")
        except BaseException:
            await server.close()
            raise
        return server

    @property
    def alive(self) -> bool:
        return not self._reader.done() and self.process.returncode is None

    @property
    def usable(self) -> bool:
        """Alive and not tainted: it may fork."""
        return self.alive and not self.tainted

    async def fork(self, *, name: str, module: str, main_path: str | None, cwd: str,
                   redirect_stdout: Redirection, redirect_stderr: Redirection,
                   timeout: float) -> ForkedWorker | None:
        """Fork one worker (None: the template refused, or died; start it another way).
        ``SpawnError`` if it does not answer within ``timeout`` (the spawn's
        ``connection_timeout``: the module's import hangs, as it would in a new process)."""
        if not self.alive:
            return None
        pipes = _ChildPipes(redirect_stdout, name)
        request_id = next(self._ids)
        answer: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        try:
            message = msgspec.msgpack.encode(ForkRequest(
                id=request_id, name=name, module=module, main_path=main_path, cwd=cwd))
            await self._send(message, pipes.child_ends())
            pipes.close_child_ends()
            kind, value = await asyncio.wait_for(asyncio.shield(answer), timeout)
        except TimeoutError:
            pipes.close_all()
            await self._broken(f"no answer to the fork of worker {name} within {timeout:g} s")
            raise SpawnError(
                f"worker {name}: the fork server did not fork it within connection_timeout "
                f"({timeout:g} s): importing {module} there did not finish (the fork server "
                "was stopped; the next spawn starts another)") from None
        except (OSError, EOFError) as error:
            pipes.close_all()
            await self._broken(f"a fork request failed: {error!r}")
            return None
        except BaseException:
            pipes.close_all()
            if answer.done() and not answer.cancelled() and answer.exception() is None:
                self._unadopted.pop(answer.result()[1], None)  # its stdin ends: it exits
            raise
        finally:
            self._pending.pop(request_id, None)
        if kind != "started":
            pipes.close_all()
            self.tainted = self.tainted or kind == "tainted"
            logger.warning("rpc_parallel fork server: cannot fork worker %s (%s); "
                           "starting it as a new process", name, value)
            return None
        return await self._adopt(int(value), pipes, name, redirect_stdout, redirect_stderr)

    async def _adopt(self, pid: int, pipes: _ChildPipes, name: str,
                     redirect_stdout: Redirection, redirect_stderr: Redirection) -> ForkedWorker:
        """The master's side of a forked child: streams over its pipes, a pidfd."""
        try:
            child = await pipes.connect(pid)
        except BaseException:
            pipes.close_all()
            self._unadopted.pop(pid, None)
            raise
        status = self._unadopted.pop(pid, None)
        if status is not None:
            child.exited(status)  # It exited before we got here.
        elif self._reader.done():
            orphan = asyncio.ensure_future(child.orphaned())  # The template died.
            self._orphans.add(orphan)
            orphan.add_done_callback(self._orphans.discard)
        else:
            self._children[pid] = child
        worker = ForkedWorker(child, name, redirect_stdout, redirect_stderr, own_group=True)
        worker.child = child
        return worker

    async def _send(self, message: bytes, fds: list[int]) -> None:
        """One request with its descriptors (waits while the socket is full)."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self.control, [message], fds)
                return
            except BlockingIOError:
                writable: asyncio.Future[None] = loop.create_future()
                loop.add_writer(self.control, _set_done, writable)
                try:
                    await writable
                finally:
                    loop.remove_writer(self.control)

    async def _read_replies(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        try:
            while True:
                size = int.from_bytes(await stdout.readexactly(4), "little")
                kind, key, value = msgspec.msgpack.decode(await stdout.readexactly(size))
                self._dispatch(kind, key, value)
        except (asyncio.IncompleteReadError, msgspec.DecodeError, ValueError, ConnectionError):
            pass
        finally:
            await self._template_gone()

    def _dispatch(self, kind: str, key: int, value: Any) -> None:
        if kind == "ready":
            if not self._ready.done():
                self._ready.set_result(True)
        elif kind == "exited":
            child = self._children.pop(key, None)
            if child is not None:
                child.exited(int(value))
            elif key in self._unadopted:
                self._unadopted[key] = int(value)
        else:
            answer = self._pending.get(key)
            if answer is not None and not answer.done():  # (else: the spawn was abandoned)
                if kind == "started":
                    self._unadopted[int(value)] = None
                answer.set_result((kind, value))

    async def _template_gone(self) -> None:
        """The reply pipe ended: the template exited (or was killed). Pending requests fall
        back; its children died with it."""
        if not self._ready.done():
            self._ready.set_result(False)
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(EOFError("the fork server exited"))
        children, self._children = list(self._children.values()), {}
        if children:
            await asyncio.gather(*(child.orphaned() for child in children))
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()

    async def _forward_stderr(self) -> None:
        stderr = self.process.stderr
        assert stderr is not None
        await forward(stderr, sys.stderr, b"[rpc_parallel fork server] ")

    async def _broken(self, why: str) -> None:
        logger.warning("rpc_parallel fork server (pid %s): %s; stopping it", self.pid, why)
        await self.close()

    async def close(self) -> None:
        """End the template (end of file on its socket; killed if it lingers) and reap it.
        Its children, if any are left, die with it."""
        self.control.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.process.wait()), 2.0)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await self.process.wait()
        await asyncio.wait([self._reader, self._stderr], timeout=5.0)
        for task in (self._reader, self._stderr):
            task.cancel()


class _ChildPipes:
    """The three descriptors of a new worker: the child's ends (sent to the template) and
    the master's ends (stdin to write the configuration; stdout if forwarded; stderr)."""

    def __init__(self, redirect_stdout: Redirection, name: str) -> None:
        self._child: list[int] = []
        self._ours: dict[str, int] = {}
        try:
            self._ours["stdin"], stdin_child = _pipe(child_reads=True)
            self._child.append(stdin_child)
            self._child.append(self._stdout(redirect_stdout, name))
            self._ours["stderr"], stderr_child = _pipe(child_reads=False)
            self._child.append(stderr_child)
        except BaseException:
            self.close_all()
            raise

    def _stdout(self, redirect: Redirection, name: str) -> int:
        if isinstance(redirect, Forward):
            self._ours["stdout"], child = _pipe(child_reads=False)
            return child
        if isinstance(redirect, DevNull):
            return os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        flags |= os.O_APPEND if isinstance(redirect, FileAppend) else os.O_TRUNC
        path = os.fspath(getattr(redirect, "path", ""))
        try:
            return os.open(path, flags, 0o666)
        except OSError as error:
            raise SpawnError(f"cannot open the stdout file of worker {name}: {error}") from None

    def child_ends(self) -> list[int]:
        return list(self._child)

    def close_child_ends(self) -> None:
        _close(self._child)
        self._child = []

    def close_all(self) -> None:
        self.close_child_ends()
        _close(list(self._ours.values()))
        self._ours = {}

    async def connect(self, pid: int) -> ForkedChild:
        """Streams over the master's ends (the descriptors pass to their transports)."""
        loop = asyncio.get_running_loop()
        transports: list[asyncio.BaseTransport] = []
        try:
            return await self._connect(loop, pid, transports)
        except BaseException:
            for transport in transports:
                transport.close()
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, pid: int,
                       transports: list[asyncio.BaseTransport]) -> ForkedChild:
        write, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, _file(self._ours.pop("stdin"), "wb"))
        transports.append(write)
        stdin = asyncio.StreamWriter(write, protocol, None, loop)
        readers: dict[str, asyncio.StreamReader] = {}
        for which in ("stdout", "stderr"):
            fd = self._ours.pop(which, None)
            if fd is None:
                continue
            reader = asyncio.StreamReader(loop=loop)
            read, _ = await loop.connect_read_pipe(
                functools.partial(asyncio.StreamReaderProtocol, reader), _file(fd, "rb"))
            transports.append(read)
            readers[which] = reader
        return ForkedChild(pid, stdin, readers.get("stdout"), readers["stderr"], transports)


def _pipe(child_reads: bool) -> tuple[int, int]:
    """A pipe as (the master's end, the child's end), both close-on-exec."""
    read, write = os.pipe2(os.O_CLOEXEC)
    return (write, read) if child_reads else (read, write)


def _file(fd: int, mode: str) -> IO[bytes]:
    return open(fd, mode, buffering=0)  # the transport owns and closes it


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
