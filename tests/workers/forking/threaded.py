"""A worker class whose module starts a thread when imported: a fork server must not fork a
process with threads, so its workers start as new processes."""

from __future__ import annotations

import os
import threading

import rpc_parallel as rp

_parked = threading.Event()
threading.Thread(target=_parked.wait, name="started-at-import", daemon=True).start()


class Threaded(rp.Worker[None]):
    @rp.rpc
    async def parent(self) -> int:
        return os.getppid()
