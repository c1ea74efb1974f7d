"""Warm processes: where a spawn gets a worker process without starting an interpreter.

The one seam for pre-starting (decisions 0010 and 0021): a spawn whose launcher says
``can_use_prestarted`` and whose options a forked process can honour asks ``take``; the
answer is a fork of the fork server (``launch._fork_server``) of the master's interpreter,
import path, main script, environment and working directory, or None, and then the spawn
starts the worker the ordinary way. One template per such key, started by the first spawn
that needs it (concurrent spawns wait for the same one); a dead one is replaced by the
next spawn; one that cannot start is not tried again by this master.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from dataclasses import dataclass

from .launch import LaunchedProcess, Redirection
from .launch._fork_server import ForkServer

ClassKey = tuple[str, str, str | None]
"""(module, qualname, main script path) of a worker class."""

ServerKey = tuple[str, tuple[str, ...], str | None, int, str]
"""(interpreter, import path, main script path, hash of the environment, working
directory)."""

SWITCH = "RPC_PARALLEL_PRESTART"
"""``0``: no warm processes; every spawn starts an interpreter."""


def supported() -> bool:
    """Whether this platform has what the fork server needs (Linux: pidfds, SCM_RIGHTS,
    the parent-death signal) and the user has not turned warm processes off."""
    return (sys.platform == "linux" and hasattr(os, "pidfd_open")
            and os.environ.get(SWITCH, "1") != "0")


@dataclass(frozen=True)
class WarmRequest:
    """A spawn's request for a warm process."""

    key: ClassKey
    name: str
    cwd: str | None
    redirect_stdout: Redirection
    redirect_stderr: Redirection
    timeout: float
    """Bounds the wait for the fork (the spawn's ``connection_timeout``)."""


class WarmProcesses:
    """The fork servers of one master, by ``ServerKey``."""

    def __init__(self) -> None:
        self._servers: dict[ServerKey, asyncio.Future[ForkServer | None]] = {}
        self._retired: list[ForkServer] = []
        """Tainted templates: they fork no more, and live on to reap what they forked."""
        self._unforkable: set[tuple[str, str | None]] = set()
        """Modules whose import starts a thread: their workers start as new processes."""
        self._closed = False

    async def take(self, request: WarmRequest) -> LaunchedProcess | None:
        """A forked worker for this request, or None (start one the ordinary way)."""
        module, _, main_path = request.key
        if self._closed or (module, main_path) in self._unforkable:
            return None
        key = _server_key(main_path)
        server = self._running(key)
        if server is None:
            try:  # A template still starting after the spawn's own bound: not this spawn's.
                server = await asyncio.wait_for(self._server(key), request.timeout / 2)
            except TimeoutError:
                return None
        if server is None:
            return None
        worker = await server.fork(
            name=request.name, module=module, main_path=main_path,
            cwd=request.cwd if request.cwd is not None else os.getcwd(),
            redirect_stdout=request.redirect_stdout, redirect_stderr=request.redirect_stderr,
            timeout=request.timeout,
        )
        if server.tainted:
            self._unforkable.add((module, main_path))
            self._retire(key, server)
        return worker

    def _retire(self, key: ServerKey, server: ForkServer) -> None:
        """Stop forking from ``server``; the next spawn starts a new template."""
        starting = self._servers.get(key)
        if starting is not None and starting.done() and starting.result() is server:
            del self._servers[key]
            self._retired.append(server)

    def _running(self, key: ServerKey) -> ForkServer | None:
        """The template of ``key`` if it is up and may fork (the common case, with no task
        to wait in), else None."""
        starting = self._servers.get(key)
        if starting is None or not starting.done():
            return None
        server = starting.result()
        return server if server is not None and server.usable else None

    async def _server(self, key: ServerKey) -> ForkServer | None:
        """The live template of ``key``: the one running, or a new one (a dead one is
        replaced; one that could not start stays None)."""
        starting = self._servers.get(key)
        if starting is not None and starting.done():
            server = starting.result()
            if server is None or server.usable:
                return server
            await server.close()
            starting = None
        if starting is None:
            starting = self._servers[key] = asyncio.ensure_future(_start(key))
        return await asyncio.shield(starting)

    async def close(self) -> None:
        """End every template (their workers, if any are left, die with them)."""
        self._closed = True
        starting, self._servers = list(self._servers.values()), {}
        retired, self._retired = self._retired, []
        for server in [*await asyncio.gather(*starting), *retired]:
            if server is not None:
                await server.close()


async def _start(key: ServerKey) -> ForkServer | None:
    python, sys_path, _, _, cwd = key
    try:
        return await ForkServer.start(python, list(sys_path), list(sys.argv), cwd, os.environ)
    except (OSError, TimeoutError, EOFError) as error:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"rpc_parallel: cannot start the fork server ({error}); "
                             "workers start as new processes\n")
        return None


def _server_key(main_path: str | None) -> ServerKey:
    """What a template shares with the workers it forks: a change to any of these (the
    master changed ``os.environ``, ``sys.path`` or its directory) needs another one."""
    raw = getattr(os.environ, "_data", None)  # the bytes behind os.environ: no decoding
    items = raw.items() if isinstance(raw, dict) else os.environ.items()
    return (sys.executable, tuple(sys.path), main_path, hash(frozenset(items)), os.getcwd())
