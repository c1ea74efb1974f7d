"""The watchdog of a master's Slurm jobs: what a killed master cannot clean up itself.

A worker whose job runs notices its master's death on its own (its link drops, or
heartbeats stop) and exits, which ends the job. A job still *pending* when the master is
SIGKILLed has no worker yet; nobody would cancel it. So the first job submission starts
this small process (``python -m rpc_parallel.launch._slurm_watchdog DIRECTORY``), in a
session of its own, holding a pipe from the master. The master writes one line per event:
``job ID`` (submitted), ``sent ID PATH`` (its configuration file was written), ``done ID``
(ended). At end of file (the master exited or died) it cancels every job whose worker
never took its configuration (not sent, or the file still there), removes the directory
and exits. A worker that did take it is left alone: it ends by itself, or lives on
under ``shutdown_on="called_shutdown"``, as asked.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import IO


class Watchdog:
    """The master's end of the watchdog's pipe."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    @classmethod
    def start(cls, directory: Path) -> Watchdog:
        process = subprocess.Popen(
            [sys.executable, "-m", "rpc_parallel.launch._slurm_watchdog", str(directory)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        return cls(process)

    def _write(self, line: str) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            with contextlib.suppress(OSError):
                stdin.write(line.encode() + b"\n")
                stdin.flush()

    def track(self, job_id: str) -> None:
        self._write(f"job {job_id}")

    def sent(self, job_id: str, path: Path) -> None:
        self._write(f"sent {job_id} {path}")

    def done(self, job_id: str) -> None:
        self._write(f"done {job_id}")

    def close(self, timeout: float = 15.0) -> None:
        """Close the pipe and reap the watchdog (it cancels what is left, then exits)."""
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _read(stream: IO[str]) -> dict[str, str | None]:
    """Job id -> its configuration file once sent; until end of file."""
    jobs: dict[str, str | None] = {}
    for line in stream:
        kind, _, rest = line.strip().partition(" ")
        job_id, _, path = rest.partition(" ")
        if kind == "job":
            jobs[job_id] = None
        elif kind == "sent" and job_id in jobs:
            jobs[job_id] = path
        elif kind == "done":
            jobs.pop(job_id, None)
    return jobs


def main(directory: str) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the master's group is its to handle
    jobs = _read(sys.stdin)
    orphans = [job_id for job_id, path in jobs.items() if path is None or os.path.exists(path)]
    if orphans:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["scancel", *orphans], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
