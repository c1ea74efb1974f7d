"""Private Unix sockets: where masters and workers listen.

On Linux a server listens on an abstract socket (a name, no file: nothing can be left
behind, whatever kills the process; see docs/decisions/0017-abstract-unix-sockets.md); its
name is random, and only a peer holding the application's secret gets past the handshake.
Elsewhere each server gets a temporary directory of its own (owner-only), removed when it
closes, at exit, or by the master once the worker that owned it is dead. (``shutil`` and
``tempfile`` are imported there only: every worker imports this module.)
"""

from __future__ import annotations

import atexit
import os
import secrets
import sys
from typing import Any

from .rpc import Server, serve_unix
from .rpc.transport import Unix, parse_address

WORKER_PREFIX = "rpc_parallel-worker-"
ABSTRACT_SOCKETS = sys.platform == "linux"
"""Linux has abstract Unix sockets: a name in the kernel, never a file."""
_made: set[str] = set()
"""The directories this process made and has not removed yet (none with abstract sockets)."""


async def serve_in_temporary_directory(prefix: str, name: str, **serve: Any) -> Server:
    """``serve_unix`` on a private address: an abstract socket with a random name (Linux),
    else ``<new temporary directory>/<name>``, a directory removed at exit at the latest
    (``remove_socket_directory`` removes it sooner)."""
    if ABSTRACT_SOCKETS:
        return await serve_unix(f"\0{prefix}{secrets.token_hex(16)}/{name}", **serve)
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, True)
    _made.add(directory)
    try:
        return await serve_unix(f"{directory}/{name}", **serve)
    except BaseException:
        _remove(directory)
        raise


def remove_socket_directory(address: str, prefix: str = "rpc_parallel-") -> None:
    """Remove the temporary directory of a server at ``unix:<path>`` (a dead worker cannot
    remove its own; a master removes its own on close). ``address`` may list alternatives
    (``unix:<path> tls:<host>:<port>``); only the Unix one names a directory, and only when
    it is not abstract."""
    for text in address.split():
        where = parse_address(text)
        if not isinstance(where, Unix) or where.path.startswith("\0"):
            continue  # TCP, or an abstract socket: no directory.
        directory = os.path.dirname(where.path)
        if os.path.basename(directory).startswith(prefix):
            _remove(directory)


def remove_own_directories() -> None:
    """Remove every directory this process made, now: for a worker about to ``os._exit``
    (which skips ``atexit``) because its master is gone (with abstract sockets there are
    none: nothing to do)."""
    for directory in list(_made):
        _remove(directory)


def _remove(directory: str) -> None:
    import shutil

    shutil.rmtree(directory, ignore_errors=True)
    _made.discard(directory)
