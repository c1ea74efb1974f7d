"""Slurm's client commands, run bounded, and what their output means.

Every command runs with a timeout (a slurmctld that does not answer must not hang a spawn)
and is killed and reaped when it passes. ``JobEnd`` turns ``scontrol show job``'s final
state, reason and exit code into the text a ``SpawnError`` or ``WorkerDied`` carries.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..errors import SpawnError

COMMAND_TIMEOUT = 30.0
"""Bound on one ``sbatch``/``squeue``/``scontrol``/``scancel``."""

FINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT",
})
"""Job states after which the job runs no more (``squeue --states=all`` shows them a while)."""

_NEVER_REASONS = frozenset({
    "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit", "PartitionInactive",
    "BadConstraints", "InvalidAccount", "InvalidQOS", "DependencyNeverSatisfied",
    "JobHeldAdmin", "JobHeldUser", "AccountNotAllowed", "QOSNotAllowed",
})
_NEVER_PATTERN = re.compile(r"Max\w*PerJob|MaxWallDurationPerJobLimit|MinCpuPerJob")


_REFUSED = "rpc_parallel bundle: "


def bundle_refusal(stderr: str) -> str | None:
    """The bootstrap's refusal of a shipped bundle on the node (``Slurm(executable=...)``),
    from the worker's stderr: the file that differs, or both sides' Pythons."""
    lines = [line for line in stderr.splitlines() if line.startswith(_REFUSED)]
    return f"the node refused the bundle: {lines[-1].removeprefix(_REFUSED)}" if lines else None


def never_starts(reason: str) -> bool:
    """A pending reason the scheduler will not resolve by waiting: the job as submitted
    exceeds a partition or QOS limit, names an account or QOS it may not use, or is held."""
    return reason in _NEVER_REASONS or _NEVER_PATTERN.search(reason) is not None


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: str
    stderr: str


async def run(
    argv: Sequence[str], *, input: bytes | None = None, env: Mapping[str, str] | None = None,
    cwd: str | None = None, timeout: float = COMMAND_TIMEOUT,
) -> Completed:
    """Run a Slurm command to its end (``SpawnError`` if it cannot start or passes
    ``timeout``; it is then killed and reaped)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env), cwd=cwd,
        )
    except OSError as error:
        raise SpawnError(f"cannot run {argv[0]} (is Slurm's client installed?): {error}") from None
    try:
        out, err = await asyncio.wait_for(process.communicate(input), timeout)
    except (TimeoutError, asyncio.CancelledError) as error:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await asyncio.shield(process.wait())
        if isinstance(error, asyncio.CancelledError):
            raise
        raise SpawnError(f"{' '.join(argv[:2])} did not answer within {timeout:g} s "
                         "(is slurmctld up?)") from None
    assert process.returncode is not None
    return Completed(process.returncode, out.decode(errors="replace"),
                     err.decode(errors="replace"))


def fields(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value2`` (one ``scontrol show -o`` line) as a mapping."""
    result: dict[str, str] = {}
    for item in line.split():
        key, equal, value = item.partition("=")
        if equal and key not in result:
            result[key] = value
    return result


@dataclass(frozen=True)
class JobEnd:
    """How a job ended, from ``scontrol show job``: state, reason, exit code."""

    job_id: str
    state: str
    reason: str
    exit_code: int
    signal: int

    @classmethod
    def parse(cls, job_id: str, line: str) -> JobEnd:
        values = fields(line)
        code, _, sig = values.get("ExitCode", "0:0").partition(":")
        return cls(
            job_id=job_id, state=values.get("JobState", "UNKNOWN"),
            reason=values.get("Reason", "None"),
            exit_code=int(code) if code.isdigit() else 0,
            signal=int(sig) if sig.isdigit() else 0,
        )

    @property
    def returncode(self) -> int:
        """As a process's: negative for the signal that ended it."""
        return -self.signal if self.signal else self.exit_code

    def describe(self) -> str:
        """``Slurm job 12 TIMEOUT (reason: TimeLimit, exit code 0:15)``."""
        text = f"Slurm job {self.job_id} {self.state}"
        details = []
        if self.reason not in ("None", ""):
            details.append(f"reason: {self.reason}")
        if self.signal:
            with contextlib.suppress(ValueError):
                details.append(f"signal {signal.Signals(self.signal).name}")
        elif self.exit_code:
            details.append(f"exit code {self.exit_code}")
        return text + (f" ({', '.join(details)})" if details else "")


async def job_end(job_id: str, env: Mapping[str, str] | None = None) -> JobEnd | None:
    """The job's state from ``scontrol show job`` (None once Slurm has forgotten it)."""
    result = await run(["scontrol", "show", "job", "-o", job_id], env=env)
    if result.returncode != 0 or not result.stdout.strip():
        return None
    return JobEnd.parse(job_id, result.stdout.strip().splitlines()[0])


async def cancel(ids: Sequence[str], *, kill: bool = False,
                 env: Mapping[str, str] | None = None) -> None:
    """``scancel`` jobs or steps (``123`` / ``123.4``); with ``kill``, SIGKILL at once
    rather than SIGTERM then SIGKILL after the cluster's KillWait. Errors are ignored: the
    job may have ended on its own meanwhile."""
    if ids:
        argv = ["scancel", *(["--signal=KILL"] if kill else []), *ids]
        with contextlib.suppress(SpawnError):
            await run(argv, env=env, timeout=10.0)
