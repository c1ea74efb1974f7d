"""A worker as a job step of the current allocation: ``srun --ntasks=1 --exact ... worker``.

``srun`` is the master's child; it forwards its stdin to the task, so the configuration
(secret, keys) travels exactly as for a local worker, never on a command line. ``srun -v``
says which step it created (``launching StepId=12.3``): until then the step is waiting for
free CPUs in the allocation, which ``start_step`` bounds. Killing a step is ``scancel`` of
that step, then of ``srun``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Sequence
from dataclasses import replace
from typing import IO, Any

from ..errors import SpawnError
from . import _process
from ._launcher import LaunchRequest
from ._slurm_commands import bundle_refusal, cancel
from .redirection import Redirection

_LAUNCHING = re.compile(r"^srun: launching StepId=(\d+\.\d+)")
_VERBOSE = re.compile(
    r"^srun: (defined options|-{4}|end of defined options|jobid \d+: nodes|launch/|"
    r"launching StepId|route/|[^:]*?\s+: )"
)
_TASK_SIGNALLED = re.compile(r"^srun: error: \S+: task \d+: (?!Exited)")
_ENDED = re.compile(r"\*\*\* (STEP|JOB) (\S+) ON \S+ ([A-Z_]+) AT \S+(?: DUE TO (.+?))? \*\*\*")


class StepProcess(_process.WorkerProcess):
    """The ``srun`` of one worker step: its verbose lines are read, not forwarded."""

    step_id: str | None = None
    """``<job>.<step>`` once ``srun`` has created the step."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        name: str,
        redirect_stdout: Redirection,
        redirect_stderr: Redirection,
        own_group: bool = False,
    ) -> None:
        # Set before the base class starts reading srun's output (which calls accept_line).
        self.started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._ended: str | None = None
        self._signalled = False
        """srun said the task was killed by a signal (its exit status is then 128 + it)."""
        super().__init__(process, name, redirect_stdout, redirect_stderr, own_group)

    async def _forward(
        self,
        stream: asyncio.StreamReader,
        target: IO[str],
        tail: bytearray | None,
        echo: bool,
    ) -> None:
        """stderr goes through ``accept_line`` first: srun's own verbose lines are read
        (the step id, how the step ended) and dropped; the rest is forwarded as usual."""
        if tail is None:
            await super()._forward(stream, target, tail, echo)
            return
        accepted = asyncio.StreamReader()
        pumping = asyncio.ensure_future(self._pump(stream, accepted))
        try:
            await super()._forward(accepted, target, tail, echo)
        finally:
            pumping.cancel()

    async def _pump(self, stream: asyncio.StreamReader, accepted: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    line = await stream.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    line = await stream.read(65536)  # a very long line: pass it on as is
                if not line:
                    return
                if self.accept_line(line.decode(errors="replace")):
                    accepted.feed_data(line)
        finally:
            accepted.feed_eof()

    def accept_line(self, text: str) -> bool:
        """Read one line of srun's stderr; whether it is the worker's (or an srun error)."""
        launching = _LAUNCHING.match(text)
        if launching is not None and not self.started.done():
            self.step_id = launching[1]
            self.where = f" in Slurm step {launching[1]}"
            self.started.set_result(launching[1])
        if _TASK_SIGNALLED.match(text):
            self._signalled = True
        ended = _ENDED.search(text)
        if ended is not None:
            kind, ident, state, why = ended.groups()
            self._ended = f"Slurm {kind.lower()} {ident} {state}" + (
                f" due to {why.lower()}" if why else "")
        return _VERBOSE.match(text) is None

    def explain_end(self) -> str | None:
        """Slurm's own words when it ended the step (``CANCELLED``, ``DUE TO TIME LIMIT``),
        and a shipped bundle's refusal on the node."""
        parts = [part for part in (self._ended, bundle_refusal(self.stderr_tail())) if part]
        return "; ".join(parts) or None

    def _as_process(self, returncode: int | None) -> int | None:
        """srun's ``128 + N`` for a task killed by signal N, as a process's ``-N``."""
        if returncode is not None and self._signalled and 128 < returncode < 128 + 65:
            return 128 - returncode
        return returncode

    @property
    def returncode(self) -> int | None:
        return self._as_process(self.process.returncode)

    async def wait(self, timeout: float | None = None) -> int | None:
        return self._as_process(await super().wait(timeout))

    async def kill_and_reap(self) -> int:
        """``scancel`` the step (SIGKILL, so its CPUs are free at once), or interrupt a
        ``srun`` still waiting for the step; then kill and reap ``srun``."""
        if self.returncode is None:
            if self.step_id is not None:
                await cancel([self.step_id], kill=True)
            else:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signal.SIGTERM)  # srun withdraws the request
            await self.wait(3.0)
        returncode = self._as_process(await super().kill_and_reap())
        assert returncode is not None
        return returncode

    async def wait_started(self, bound: float, job_id: str) -> None:
        """Until ``srun`` has created the step; ``SpawnError`` if it exits first (it gives up
        by itself after ``bound`` seconds without free CPUs: ``--immediate``)."""
        exited = asyncio.ensure_future(self.wait())
        waiting: set[asyncio.Future[Any]] = {self.started, exited}
        try:  # srun's own bound comes first; this one only guards against a stuck srun
            await asyncio.wait(waiting, timeout=bound + 10.0,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
        if self.started.done():
            return
        stuck = self.returncode is None
        if stuck:
            await self.kill_and_reap()
        await self.drain_output(1.0)
        tail = self.stderr_tail()
        if stuck or "nodes are busy" in tail:
            raise SpawnError(
                f"worker {self.name}: no job step could start in allocation {job_id} within "
                f"{bound:g} s: Slurm keeps the step pending because the CPUs (or memory, GPUs) "
                "it asks for are all held by other steps of the allocation; close some "
                "workers, ask the allocation for more tasks, or raise Slurm(queue_timeout=...)",
                stderr_tail=tail)
        raise SpawnError(f"srun could not start worker {self.name} in allocation {job_id} "
                         f"(srun exited with status {self.returncode})", stderr_tail=tail)


async def start_step(
    request: LaunchRequest, srun_argv: Sequence[str], bound: float, job_id: str,
    boot: bytes | None = None,
) -> StepProcess:
    """Start ``request.command`` as a step of allocation ``job_id`` under ``srun_argv``;
    returns once the step exists (the spawn's ``connection_timeout`` starts then). ``boot``
    (a bundle's bootstrap) goes first on its stdin, before the configuration."""
    command = [*srun_argv, *request.command]
    started = await _process.start(replace(request, command=command), StepProcess)
    assert isinstance(started, StepProcess)
    if boot is not None and started.stdin is not None:
        started.stdin.write(boot)  # srun forwards it to the task once the step runs
    started.where = f" in allocation {job_id}"
    try:
        await started.wait_started(bound, job_id)
    except BaseException:
        if started.returncode is None:
            await asyncio.shield(started.kill_and_reap())
        started.close_pipes()
        raise
    return started
