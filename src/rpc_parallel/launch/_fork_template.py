"""The fork server's template process: the program that forks local workers.

Started by the master (``_fork_server.ForkServer``) as ``python -m rpc_parallel fork-server
child-of <pid>@<host>``, with

* fd 0: a ``SOCK_SEQPACKET`` Unix socket to the master. Its first message is the setup
  (the master's import path and argv); each later message is one fork request carrying,
  as ``SCM_RIGHTS``, the new worker's stdin, stdout and stderr. End of file means the
  master is gone: the template exits at once;
* fd 1: the reply pipe to the master (``started``, ``refused``, ``exited`` records, each a
  4-byte little-endian length and a MessagePack array). The template moves it to another
  descriptor and points fd 1 at its stderr, so what an imported module prints never
  reaches the replies;
* fd 2: its stderr, which the master forwards.

It forks with no event loop and no thread: a ``select`` loop over the socket and the wake-up
pipe of ``SIGCHLD``. Before its first fork it rehearses a worker's start (event loops it
closes again) and compacts its heap, so that each child has less to copy (decision 0028).
It takes every request waiting on its socket (up to ``_BATCH``), imports a worker class's
module on the first request that names it, then forks the requests back to back and replies
to them in one write: between two forks it writes as few pages as it can, each of which
would be copied (decision 0028). It is the parent of every worker it forks: it reaps each
one as it exits and reports the exit statuses, so the master's supervision is the same as
for a child of its own.
A forked child starts a session of its own, takes its three descriptors (and closes those
of the requests of its batch forked after it: other workers' stdio), dies with the
template (``PR_SET_PDEATHSIG``), changes to the requested directory, reseeds the random
state it inherited, and becomes the worker (``run_worker``: the same code an exec'd worker
runs, reading its configuration from its stdin).
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import msgspec

from ..rpc._segments import sweep_processes

_PR_SET_NAME = 15
_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 1 << 20
_BATCH = 64
"""At most this many fork requests are taken at once (their replies wait for the last)."""


class Setup(msgspec.Struct, array_like=True):
    """The first message on the socket: what the template imports with."""

    sys_path: list[str]
    argv: list[str]


class ForkRequest(msgspec.Struct, array_like=True):
    """One worker to fork; its stdin, stdout and stderr come with it (SCM_RIGHTS)."""

    id: int
    name: str
    module: str
    main_path: str | None
    cwd: str


Reply = tuple[str, int, Any]
"""``("started", id, pid)``, ``("refused", id, reason)``, ``("tainted", id, reason)`` (a
thread runs in the template now: it forks no more) or ``("exited", pid, status)`` (status
as ``subprocess`` gives it: negative for a signal)."""


class _Template:
    """The state of the template's loop: its socket, reply pipe and the modules it has."""

    def __init__(self, preload: Callable[[str, str | None], None],
                 run_worker: Callable[[], object], rehearse: Callable[[], object]) -> None:
        self.preload = preload
        self.run_worker = run_worker
        self.rehearse = rehearse
        self.control = socket.socket(fileno=0)
        self.replies = os.dup(1)
        os.dup2(2, 1)  # print() in an imported module goes to stderr, not into the replies
        self.wake_read, self.wake_write = os.pipe()
        for fd in (self.replies, self.wake_read, self.wake_write):
            os.set_inheritable(fd, False)
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.imported: set[tuple[str, str | None]] = set()
        self.children: set[int] = set()
        self.later: list[int] = []
        self.master = os.getppid()
        libc = _libc()
        self.prctl = None if libc is None else libc.prctl  # (looked up once, not per child)
        self.malloc_trim = getattr(libc, "malloc_trim", None)

    def run(self) -> NoReturn:
        setup = msgspec.msgpack.decode(self.control.recv(_MAX_MESSAGE), type=Setup)
        sys.path[:] = setup.sys_path
        if setup.argv:
            sys.argv[:] = setup.argv
        self.control.setblocking(False)  # (the requests: taken while there are some)
        self.rehearse()  # Before any fork and any signal set-up: its loops are closed after.
        self._compact()
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGCHLD, _ignore)
        self._reply(("ready", 0, os.getpid()))
        while True:
            ready, _, _ = select.select([self.control.fileno(), self.wake_read], [], [])
            if self.wake_read in ready:
                self._reap()
            if self.control.fileno() in ready:
                self._serve_pending()

    def _serve_pending(self) -> None:
        """Take every request waiting on the socket (up to ``_BATCH``), then fork them back
        to back and reply: after each fork, every page the template writes is copied (its
        pages are shared with the child now), so the less Python between two forks, the
        fewer copies; a request read, decoded and answered between forks wrote ~130 pages
        (decision 0028)."""
        batch: list[tuple[ForkRequest, list[int]]] = []
        while len(batch) < _BATCH:
            try:  # (the socket does not block: select said it is readable)
                message, fds, _, _ = socket.recv_fds(self.control, _MAX_MESSAGE, 3)
            except BlockingIOError:
                break
            except OSError:
                message, fds = b"", []
            if not message:
                self._end()  # The master is gone (or closed us): the children die with us.
            request = self._request(message, fds)
            if request is not None:
                batch.append((request, fds))
        for request, _ in batch:
            self._import(request)  # (before the forks: an import writes many pages)
        replies: list[Reply] = []
        for index, (request, fds) in enumerate(batch):
            # A child closes the descriptors of the requests forked after it (they are
            # other workers' stdin, stdout and stderr; those before it are closed already).
            self.later = [fd for _, later in batch[index + 1:] for fd in later]
            replies.append(self._fork(request, fds))
        self.later = []
        self._reply_all(replies)

    def _request(self, message: bytes, fds: list[int]) -> ForkRequest | None:
        """The request in ``message``, or None (refused, or not one: said so)."""
        try:
            request = msgspec.msgpack.decode(message, type=ForkRequest)
        except msgspec.DecodeError as error:
            _close_all(fds)
            sys.stderr.write(f"rpc_parallel fork server: bad request: {error}\n")
            return None
        if len(fds) != 3:
            _close_all(fds)
            self._reply(("refused", request.id, f"expected 3 descriptors, got {len(fds)}"))
            return None
        return request

    def _import(self, request: ForkRequest) -> None:
        key = (request.module, request.main_path)
        if key not in self.imported:
            self.imported.add(key)  # Once: a failed import is the child's to report.
            self.preload(request.module, request.main_path)
            self._compact()

    def _fork(self, request: ForkRequest, fds: list[int]) -> Reply:
        if threading.active_count() > 1:
            _close_all(fds)
            return ("tainted", request.id,
                    f"importing {request.module} started a thread in the fork server "
                    f"({', '.join(t.name for t in threading.enumerate())}); forking it is unsafe")
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        gc.freeze()  # What the template holds is never collected in a child: no copies for it.
        try:
            pid = os.fork()
        except OSError as error:
            _close_all(fds)
            return ("refused", request.id, f"fork failed: {error}")
        if pid == 0:
            self._become_worker(request, fds)
        _close_all(fds)
        self.children.add(pid)
        return ("started", request.id, pid)

    def _compact(self) -> None:
        """Free what importing and rehearsing left unreachable, and give the C heap's free
        pages back: every fork copies the page table of each resident page and every
        child's exit tears it down (malloc_trim took 1.4 of 26.6 MiB here)."""
        gc.collect()
        if self.malloc_trim is not None:
            with contextlib.suppress(Exception):
                self.malloc_trim(0)

    def _become_worker(self, request: ForkRequest, fds: list[int]) -> NoReturn:
        """In the child: a session of its own, its own descriptors and random state, then
        the worker's main. Never returns into the template's loop."""
        code = 70
        try:
            os.setsid()
            template = os.getppid()
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self._die_with_template(template, request.name)
            self.control.detach()  # fd 0 becomes the worker's stdin below
            for target, fd in enumerate(fds):
                os.dup2(fd, target)
            _close_all([*fds, *self.later, self.replies, self.wake_read, self.wake_write])
            os.chdir(request.cwd)
            reseed()
            self.run_worker()
        except BaseException:
            with contextlib.suppress(Exception):
                traceback.print_exc()
        finally:
            os._exit(code)

    def _die_with_template(self, template: int, name: str) -> None:
        """SIGKILL when the template ends (it reaps us; without it nobody reports our exit
        to the master), and the worker's name as the process name (``ps -o comm``)."""
        if self.prctl is not None:
            self.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            self.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
        if os.getppid() != template:
            os._exit(70)  # It died before the death signal was armed.

    def _reap(self) -> None:
        """Reap every child that has exited; report them in one write."""
        with contextlib.suppress(OSError):
            while os.read(self.wake_read, 512):
                pass
        exited: list[Reply] = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self.children.discard(pid)
            exited.append(("exited", pid, os.waitstatus_to_exitcode(status)))
        if exited:
            self._reply_all(exited)

    def _reply(self, reply: Reply) -> None:
        self._reply_all([reply])

    def _reply_all(self, replies: list[Reply]) -> None:
        """Write ``replies`` to the master at once (each a length and its MessagePack)."""
        out = bytearray()
        for reply in replies:
            data = msgspec.msgpack.encode(reply)
            out += len(data).to_bytes(4, "little") + data
        try:
            _write_all(self.replies, bytes(out))
        except OSError:
            self._end()  # The master is gone.

    def _end(self) -> NoReturn:
        """Exit; the children die with us (their death signal) without a chance to clean
        up, so remove the shared-memory segments they created (decision 0022), and the
        master's too if it is gone."""
        gone = self.children | ({self.master} if _dying(self.master) else set())
        with contextlib.suppress(OSError):
            sweep_processes(gone)
        os._exit(0)


_PF_EXITING = 0x4


def _dying(pid: int) -> bool:
    """Whether ``pid`` is gone, a zombie, or exiting (its flags say so as soon as it starts
    to: before its descriptors close, which is how the template hears of it)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING)


def reseed() -> None:
    """Fresh random state in a forked child: numpy's legacy global ``RandomState``, if numpy
    is imported (``numpy.random.seed()`` from the OS's entropy). ``random``'s global
    generator is reseeded by Python itself at every fork (``random`` registers that with
    ``os.register_at_fork``); ``secrets``, ``os.urandom`` and ``uuid4`` read the kernel's
    generator and need nothing."""
    numpy_random = sys.modules.get("numpy.random")
    seed = getattr(numpy_random, "seed", None)
    if seed is not None:
        with contextlib.suppress(Exception):
            seed()


def _libc() -> Any:
    """The C library, for ``prctl`` (ctypes is imported here: the template needs it, the
    master, which imports this module for its records, does not)."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _ignore(signum: int, frame: object) -> None:
    """SIGCHLD's handler: the wake-up pipe does the work."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def serve(preload: Callable[[str, str | None], None], run_worker: Callable[[], object],
          rehearse: Callable[[], object]) -> NoReturn:
    """The template's main: serve fork requests until the master goes.

    ``preload(module, main_path)`` imports a worker class's module (and must leave nothing
    half-imported when it fails: the forked child imports it again and reports the error
    as an exec'd worker does); ``run_worker()`` is the worker process's main;
    ``rehearse()``, run once before the first fork, runs what every worker runs first, so
    that the children find it warm (it must leave no event loop and no thread behind).
    """
    _Template(preload, run_worker, rehearse).run()
