"""Unix sockets in private temporary directories: where masters and workers listen.

Each server gets a directory of its own (owner-only), removed when it closes, at exit, or
by the master once the worker that owned it is dead.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

from .rpc import Server, serve_unix
from .rpc.transport import Unix, parse_address

WORKER_PREFIX = "rpc_parallel-worker-"
_made: set[str] = set()
"""The directories this process made and has not removed yet."""


async def serve_in_temporary_directory(prefix: str, name: str, **serve: Any) -> Server:
    """``serve_unix`` on ``<new temporary directory>/<name>``; the directory is removed at
    exit at the latest (``remove_socket_directory`` removes it sooner)."""
    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, True)
    _made.add(directory)
    try:
        return await serve_unix(f"{directory}/{name}", **serve)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise


def remove_socket_directory(address: str, prefix: str = "rpc_parallel-") -> None:
    """Remove the temporary directory of a server at ``unix:<path>`` (a dead worker cannot
    remove its own; a master removes its own on close). ``address`` may list alternatives
    (``unix:<path> tls:<host>:<port>``); only the Unix one names a directory."""
    for text in address.split():
        where = parse_address(text)
        if not isinstance(where, Unix):
            continue
        directory = os.path.dirname(where.path)
        if os.path.basename(directory).startswith(prefix):
            shutil.rmtree(directory, ignore_errors=True)
            _made.discard(directory)


def remove_own_directories() -> None:
    """Remove every directory this process made, now: for a worker about to ``os._exit``
    (which skips ``atexit``) because its master is gone."""
    for directory in list(_made):
        shutil.rmtree(directory, ignore_errors=True)
        _made.discard(directory)
