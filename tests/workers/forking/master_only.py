"""A worker class whose module imports only in the master program (the process whose pid
is in ``MASTER_ONLY_PID``): in a fork server's template or a worker process the import
fails, as a module with a dependency missing there would."""

from __future__ import annotations

import os

import rpc_parallel as rp

if os.environ.get("MASTER_ONLY_PID") != str(os.getpid()):
    raise ImportError("master_only imports only in the master")


class MasterOnly(rp.Worker[None]):
    @rp.rpc
    async def ping(self) -> str:
        return "pong"
