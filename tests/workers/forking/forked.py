"""Worker classes for the fork server tests (imported by the master scripts and the template)."""

from __future__ import annotations

import os
import random
import sys

import numpy

import rpc_parallel as rp

IMPORT_DRAW = float(numpy.random.random())
"""numpy's global state in use at import (in the template, before it forks): without the
reseed in each child, every forked worker would draw the same numbers."""


class Facts(rp.Worker[None]):
    @rp.rpc
    def facts(self) -> dict[str, int | float | str]:
        """Who this process is: ids, random state, working directory, umask, name."""
        mask = os.umask(0)
        os.umask(mask)
        with open("/proc/self/comm") as file:
            comm = file.read().strip()
        return {
            "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0),
            "pgid": os.getpgid(0), "random": random.random(),
            "numpy": float(numpy.random.random()), "cwd": os.getcwd(), "umask": mask,
            "comm": comm, "mark": os.environ.get("MARK", ""), "pipes": _pipes(),
            "stdio": _pipes(0, 1, 2),
        }

    @rp.rpc
    async def say(self, text: str) -> None:
        print(f"out: {text}", flush=True)
        print(f"err: {text}", file=sys.stderr, flush=True)


def _pipes(*fds: int) -> str:
    """The pipes this process has open as ``fds`` (default: any), as ``pipe:[inode]``,
    comma-separated: a forked worker must hold no other worker's stdin, stdout or stderr
    (their ends would stay open)."""
    found = []
    for fd in fds or os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            found.append(target)
    return ",".join(sorted(found))

