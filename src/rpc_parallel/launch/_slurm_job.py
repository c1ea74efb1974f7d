"""A worker as a Slurm job of its own, submitted with ``sbatch`` from outside an allocation.

A batch job has no stdin from the master, so its configuration (secret, TLS keys) goes
through a file: ``send`` writes it with mode 0600 into a private 0700 directory of the
submitting user (``private_directory``), under a random name, and the worker, told only
the file's *path* (an environment variable, not a secret), reads and deletes it as it
starts. The job script holds the worker's command, no secret. See docs/decisions/0016.

``JobWatcher`` polls ``squeue`` once for all of a master's jobs; ``JobProcess`` waits on
it for the job to start (bounded by ``queue_timeout``) and to end, and asks ``scontrol``
for the final state, reason and exit code. ``_slurm_watchdog`` cancels the jobs whose
worker never got its configuration if the master is killed.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import shlex
import shutil
import sys
import tempfile
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import SpawnError
from ._launcher import CONFIG_FILE_VARIABLE, LaunchRequest
from ._slurm_commands import (
    FINAL_STATES,
    JobEnd,
    bundle_refusal,
    cancel,
    job_end,
    never_starts,
    run,
)
from ._slurm_watchdog import Watchdog
from .redirection import DevNull, FileAppend, FileTruncate, Forward, Redirection

DIRECTORY_VARIABLE = "RPC_PARALLEL_SLURM_DIR"
POLL_INTERVAL = 0.5


class _Private:
    """This master's private directory for job files (created on first use, 0700)."""

    path: Path | None = None
    watchdog: Watchdog | None = None

    @classmethod
    def get(cls) -> tuple[Path, Watchdog]:
        if cls.path is None or not cls.path.is_dir():
            base = Path(os.environ.get(DIRECTORY_VARIABLE) or Path.home() / ".rpc_parallel")
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            cls.path = Path(tempfile.mkdtemp(prefix=f"slurm-{os.getpid()}-", dir=base))
            cls.watchdog = Watchdog.start(cls.path)
            atexit.register(remove_private_directory)
        assert cls.watchdog is not None
        return cls.path, cls.watchdog


@dataclass
class _Files:
    config: Path
    stdout: Path
    stderr: Path
    boot: Path
    """A bundle's bootstrap, the job's stdin (``Slurm(executable=...)``; no secret in it)."""

    @classmethod
    def make(cls, directory: Path, name: str) -> _Files:
        stem = f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}-{uuid.uuid4().hex}"
        return cls(directory / f"{stem}.config", directory / f"{stem}.out",
                   directory / f"{stem}.err", directory / f"{stem}.boot")

    def remove(self) -> None:
        for path in (self.config, self.stdout, self.stderr, self.boot):
            with contextlib.suppress(OSError):
                path.unlink()


@dataclass
class JobProcess:
    """A submitted worker job, as the spawn and the supervisor use a ``LaunchedProcess``.

    ``pid`` is 0: the worker's own pid on its node is known once it registers.
    """

    name: str
    job_id: str
    files: _Files
    redirect_stdout: Redirection
    redirect_stderr: Redirection
    watchdog: Watchdog
    pid: int = 0
    state: str = "PENDING"
    reason: str = "None"
    end: JobEnd | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tail: deque[str] = field(default_factory=lambda: deque(maxlen=40))
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    """Its output followers, and a cancellation started by ``kill``."""

    @property
    def returncode(self) -> int | None:
        return None if self.end is None else self.end.returncode

    @property
    def where(self) -> str:
        """For messages: ``worker W in Slurm job 12 ...``."""
        return f" in Slurm job {self.job_id}"

    def observe(self, state: str, reason: str, end: JobEnd | None = None) -> None:
        """The watcher's news: a new state, or (``end``) its final one."""
        self.state, self.reason = state, reason
        if end is not None and self.end is None:
            self.end = end
            self.watchdog.done(self.job_id)
        self.changed.set()

    async def wait(self, timeout: float | None = None) -> int | None:
        async def ended() -> None:
            while self.end is None:
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(ended(), timeout)
        except TimeoutError:
            return None
        await self.drain_output(1.0)
        return self.returncode

    async def send(self, message: bytes) -> None:
        """Write the configuration file (0600, complete before it appears under its name)."""
        partial = self.files.config.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, len(message).to_bytes(4, "little") + message)
        finally:
            os.close(fd)
        os.replace(partial, self.files.config)
        self.watchdog.sent(self.job_id, self.files.config)

    def kill(self) -> None:
        """Cancel the job (in the background; ``kill_and_reap`` waits for the end)."""
        if self.end is None:
            task = asyncio.ensure_future(cancel([self.job_id], kill=True))
            self._tasks.append(task)

    async def kill_and_reap(self) -> int:
        if self.end is None:
            await cancel([self.job_id], kill=True)
        if await self.wait(30.0) is None:
            self.observe(self.state, self.reason, JobEnd(self.job_id, "UNKNOWN", "scancel", 0, 9))
        self.close_pipes()
        assert self.end is not None
        return self.end.returncode

    async def stop(self, grace: float) -> int:
        returncode = await self.wait(grace)
        if returncode is None:
            returncode = await self.kill_and_reap()
        self.close_pipes()
        return returncode

    def stderr_tail(self) -> str:
        return "".join(self._tail)[-8000:]

    def explain_end(self) -> str | None:
        """Slurm's state, reason and exit code, and a shipped bundle's refusal on the node."""
        if self.end is None:
            return None
        refusal = bundle_refusal(self.stderr_tail())
        return self.end.describe() + (f"; {refusal}" if refusal else "")

    def start_forwarding(self) -> None:
        stdout = self.files.stdout if isinstance(self.redirect_stdout, Forward) else None
        followed: list[tuple[Path | None, IO[str], deque[str] | None]] = [
            (stdout, sys.stdout, None), (self.files.stderr, sys.stderr, self._tail)]
        for path, target, tail in followed:
            if path is not None:
                self._tasks.append(asyncio.ensure_future(_follow(self, path, target, tail)))

    async def drain_output(self, timeout: float) -> None:
        """Let the file readers read what the job wrote up to its end."""
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    def close_pipes(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.end is not None:
            self.files.remove()


def _read_from(path: Path, offset: int) -> bytes:
    """What was appended to ``path`` since ``offset`` (small reads of a local or shared file)."""
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read()
    except OSError:
        return b""


async def _follow(job: JobProcess, path: Path, target: IO[str], tail: deque[str] | None) -> None:
    """Copy what the job writes to ``path`` (prefixed lines) until the job has ended."""
    offset = 0
    pending = b""
    while True:
        final = job.end is not None
        chunk = _read_from(path, offset)
        offset += len(chunk)
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if final and pending:
            lines, pending = [*lines, pending], b""
        for line in lines:
            text = line.decode(errors="replace") + "\n"
            if tail is not None:
                tail.append(text)
            with contextlib.suppress(OSError, ValueError):
                target.write(f"[{job.name}] {text}")
                target.flush()
        if final:
            return
        job.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.changed.wait(), POLL_INTERVAL)


class JobWatcher:
    """One ``squeue`` poll for all the jobs of this event loop's master."""

    _instances: dict[asyncio.AbstractEventLoop, JobWatcher] = {}

    def __init__(self) -> None:
        self.jobs: dict[str, JobProcess] = {}
        self.task: asyncio.Task[None] | None = None

    @classmethod
    def current(cls) -> JobWatcher:
        loop = asyncio.get_running_loop()
        for old in [key for key in cls._instances if key.is_closed()]:
            del cls._instances[old]
        return cls._instances.setdefault(loop, cls())

    def track(self, job: JobProcess) -> None:
        self.jobs[job.job_id] = job
        if self.task is None or self.task.done():
            self.task = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while self.jobs:
            with contextlib.suppress(SpawnError):
                await self._poll_once()
            await asyncio.sleep(POLL_INTERVAL)  # the polling period, not a wait for a condition

    async def _poll_once(self) -> None:
        ids = list(self.jobs)
        result = await run(["squeue", "-h", "--states=all", "-o", "%i|%T|%r",
                            "-j", ",".join(ids)], timeout=10.0)
        seen: dict[str, tuple[str, str]] = {}
        for line in result.stdout.splitlines():
            job_id, _, rest = line.strip().partition("|")
            state, _, reason = rest.partition("|")
            seen[job_id] = (state, reason)
        for job_id in ids:
            job = self.jobs[job_id]
            state, reason = seen.get(job_id, ("", ""))
            if state and state not in FINAL_STATES:
                if (state, reason) != (job.state, job.reason):
                    job.observe(state, reason)
                continue
            if result.returncode != 0 and not state:
                continue  # squeue failed: ask again at the next poll
            end = await job_end(job_id) or JobEnd(job_id, state or "UNKNOWN", reason or "None", 0, 0)
            if end.state not in FINAL_STATES and state:
                end = JobEnd(job_id, state, reason, end.exit_code, end.signal)
            del self.jobs[job_id]
            job.observe(end.state, end.reason, end)


def _sbatch_argv(options: JobOptions, name: str, files: _Files) -> list[str]:
    # --no-requeue: a worker's job that failed is reported as failed; run again later it
    # would find no configuration and no spawn waiting for it.
    argv = ["sbatch", "--parsable", f"--job-name={name}", "--ntasks=1", "--nodes=1",
            "--no-requeue", f"--cpus-per-task={options.cpus_per_task}",
            f"--error={files.stderr}"]
    stdout = options.redirect_stdout
    if isinstance(stdout, Forward):
        argv.append(f"--output={files.stdout}")
    elif isinstance(stdout, DevNull):
        argv.append("--output=/dev/null")
    elif isinstance(stdout, FileAppend | FileTruncate):
        argv.append(f"--output={os.fspath(stdout.path)}")
        argv.append("--open-mode=" + ("append" if isinstance(stdout, FileAppend) else "truncate"))
    for flag, value in options.flags:
        if value is not None:
            argv.append(f"--{flag}={value}")
    return [*argv, *options.sbatch_args]


@dataclass(frozen=True)
class JobOptions:
    """What ``rp.Slurm`` asks of a job (see ``slurm.Slurm``)."""

    cpus_per_task: int
    flags: Sequence[tuple[str, str | None]]
    sbatch_args: Sequence[str]
    queue_timeout: float | None
    redirect_stdout: Redirection
    boot: bytes | None = None
    """A bundle's bootstrap: the job reads it on stdin, from a file, before anything else."""


def _check_cwd(request: LaunchRequest) -> None:
    """Slurm would run a job whose directory is missing in /tmp instead: refuse it here (the
    nodes share this file system, or the job could not find its configuration either)."""
    if request.cwd is not None and not os.path.isdir(request.cwd):
        raise SpawnError(f"cwd {request.cwd!r} of worker {request.name} is not a directory")


async def submit(request: LaunchRequest, options: JobOptions) -> JobProcess:
    """Submit the worker as a job and return once it runs (``SpawnError`` if it cannot)."""
    _check_cwd(request)
    directory, watchdog = _Private.get()
    files = _Files.make(directory, request.name)
    env = {**os.environ, **(request.env or {}), "RPC_PARALLEL_WORKER": "1",
           CONFIG_FILE_VARIABLE: str(files.config)}
    for variable in [v for v in env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
        del env[variable]  # a job of its own: nothing of an enclosing job leaks in
    script = _script(request.command, files, options.boot)
    # sbatch's working directory is the job's.
    try:
        result = await run(_sbatch_argv(options, request.name, files), input=script, env=env,
                           cwd=request.cwd)
    except BaseException:
        files.remove()
        raise
    if result.returncode != 0:
        files.remove()
        raise SpawnError(f"sbatch refused the job of worker {request.name}: "
                         f"{result.stderr.strip() or result.stdout.strip()}")
    job_id = result.stdout.strip().split(";")[0]
    job = JobProcess(request.name, job_id, files, request.redirect_stdout,
                     request.redirect_stderr, watchdog)
    watchdog.track(job_id)
    job.start_forwarding()
    JobWatcher.current().track(job)
    try:
        await _wait_running(job, options.queue_timeout)
    except BaseException:
        await asyncio.shield(job.kill_and_reap())
        raise
    return job


def _script(command: Sequence[str], files: _Files, boot: bytes | None) -> bytes:
    """The job script: ``exec`` the worker's command (its stdin the bootstrap file, if any)."""
    line = f"exec {shlex.join(command)}"
    if boot is not None:
        fd = os.open(files.boot, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, boot)
        finally:
            os.close(fd)
        line += f" <{shlex.quote(str(files.boot))}"
    return f"#!/bin/sh\n{line}\n".encode()


async def _wait_running(job: JobProcess, queue_timeout: float | None) -> None:
    """Until the job runs; ``SpawnError`` with the scheduler's reason if it cannot."""
    loop = asyncio.get_running_loop()
    deadline = None if queue_timeout is None else loop.time() + queue_timeout
    while job.state != "RUNNING":
        if job.end is not None:
            await job.drain_output(1.0)
            raise SpawnError(f"the job of worker {job.name} ended before it ran: "
                             f"{job.explain_end()}", stderr_tail=job.stderr_tail())
        if job.state == "PENDING" and never_starts(job.reason):
            raise SpawnError(
                f"Slurm job {job.job_id} of worker {job.name} can never start: the scheduler "
                f"says {job.reason} (the job exceeds a limit of its partition or QOS, or is "
                "held); cancelled")
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            raise SpawnError(
                f"Slurm job {job.job_id} of worker {job.name} still {job.state} after "
                f"queue_timeout ({queue_timeout:g} s), the scheduler's reason: {job.reason}; "
                "cancelled")
        job.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job.changed.wait(), remaining)


def remove_private_directory() -> None:
    """At the master's exit: the watchdog's pipe closes and the directory goes."""
    if _Private.watchdog is not None:
        _Private.watchdog.close()
    if _Private.path is not None:
        shutil.rmtree(_Private.path, ignore_errors=True)
    _Private.path = _Private.watchdog = None
