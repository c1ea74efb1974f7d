"""Running a small user program as a process of its own (the way a new user runs one)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..hardening.support import descendants

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    took: float
    workers_seen: set[int] = field(default_factory=set)
    timed_out: bool = False

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")


def _is_worker(pid: int) -> bool:
    """A worker process, exec'd or forked (a fork server's worker, or the template itself,
    shows the template's command line)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            argv = file.read()
            return b"rpc_parallel\0worker\0" in argv or b"rpc_parallel\0fork-server\0" in argv
    except OSError:
        return False


async def run_program(path: Path, *args: str, timeout: float = 30.0, stdin: bytes | None = None,
                      argv0: str | None = None) -> Ran:
    """Run ``python path args`` in its own session; kill the whole session after ``timeout``.
    Records every worker process seen below it while it ran."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    env.pop("RPC_PARALLEL_RPC_SETTINGS", None)
    command = [sys.executable, argv0 or str(path), *args]
    process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, cwd=str(path.parent), start_new_session=True)
    seen: set[int] = set()
    started = time.monotonic()
    communicate = asyncio.ensure_future(process.communicate(stdin))
    timed_out = False
    while not communicate.done():
        seen |= {pid for pid in descendants(process.pid) if _is_worker(pid)}
        if time.monotonic() - started > timeout:
            timed_out = True
            _kill_session(process.pid)
            break
        await asyncio.wait([communicate], timeout=0.05)
    out, err = await asyncio.wait_for(communicate, 30.0)
    _kill_session(process.pid)  # anything it left behind
    return Ran(process.returncode, out, err, time.monotonic() - started, seen, timed_out)


def _kill_session(sid: int) -> None:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == sid:
                os.kill(int(entry), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def write_program(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path
