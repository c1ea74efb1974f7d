"""``rp.Slurm``: workers as Slurm job steps (inside an allocation) or jobs (outside one).

Inside an allocation (``SLURM_JOB_ID`` set: under ``salloc`` or in an ``sbatch`` script)
each worker is a job step, ``srun --ntasks=1 --nodes=1 --exact ...``, whose stdin carries
the configuration like a local worker's. Outside one, each worker is a job of its own,
``sbatch ...``, whose configuration goes through a private 0600 file (``_slurm_job``). In
both cases ``launch`` returns once the step or job *runs*, so the spawn's
``connection_timeout`` covers only the worker's start; the wait for resources before that
is bounded by ``queue_timeout``. docs/decisions/0016 explains the choices.

With ``executable=`` (an ``rp.RemoteExecutable`` at a path every node sees, a shared file
system), the worker runs from that bundle under an isolated interpreter instead of the
master's: the bundle's bootstrap goes first on the step's stdin (or, for a job, comes from a
file in the private directory), checks every file on the node, then runs the worker.

``slurm_allocation()`` reads the current allocation (nodes, CPUs and tasks per node) for
code that sizes a pool from it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from ._launcher import ConnectBack, LaunchedProcess, LaunchRequest
from ._slurm_env import SlurmAllocation, expand_counts, expand_hostlist, slurm_allocation
from .executable import RemoteExecutable
from .options import Local

__all__ = ["Slurm", "SlurmAllocation", "expand_counts", "expand_hostlist", "slurm_allocation"]

STEP_WAIT = 10.0
"""How long a step may wait for free CPUs in the allocation when ``queue_timeout`` is None:
the allocation is the user's own, so a long wait means it is oversubscribed, not busy."""

STEP_CONNECT_BACK = ConnectBack(master_host=("env:SLURM_LAUNCH_NODE_IPADDR",))


def _check_text(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError(f"Slurm({name}=...) takes a non-empty string or None, got {value!r}")


def _check_args(name: str, value: object) -> None:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(
        isinstance(item, str) for item in value
    ):
        raise TypeError(f"Slurm({name}=...) takes a sequence of strings, e.g. "
                        f"['--constraint=fast'], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Slurm:
    """Start each worker through Slurm: a job step inside an allocation, else a job.

    ``cpus_per_task``, ``mem``, ``gres``, ``nodelist`` apply to both; ``partition``,
    ``time``, ``account``, ``qos`` and ``sbatch_args`` to jobs; ``srun_args`` to steps.
    ``queue_timeout`` bounds the wait for resources (a pending job; a step waiting for free
    CPUs of the allocation, 10 s when None).

    Without ``executable`` the worker runs the master's interpreter (``sys.executable``,
    or ``python``: then of the master's Python version, as it imports the master's packages)
    with the master's ``rpc_parallel`` and import path: the nodes are assumed to share the
    master's files. With ``executable`` (an ``rp.RemoteExecutable`` whose directory every
    node sees at the same path), the worker runs from that bundle under ``executable.python``
    (at the same path on the nodes), isolated from any installed package; the bundle is
    checked on the node before each worker starts.
    """

    partition: str | None = None
    time: str | None = None
    account: str | None = None
    qos: str | None = None
    cpus_per_task: int = 1
    mem: str | None = None
    gres: str | None = None
    nodelist: str | None = None
    srun_args: Sequence[str] = ()
    sbatch_args: Sequence[str] = ()
    queue_timeout: float | None = None
    executable: RemoteExecutable | None = None
    python: str | None = None

    def __post_init__(self) -> None:
        for name in ("partition", "time", "account", "qos", "mem", "gres", "nodelist", "python"):
            _check_text(name, getattr(self, name))
        if isinstance(self.cpus_per_task, bool) or not isinstance(self.cpus_per_task, int) \
                or self.cpus_per_task < 1:
            raise ValueError(f"Slurm(cpus_per_task=...) must be a positive int, got "
                             f"{self.cpus_per_task!r}")
        _check_args("srun_args", self.srun_args)
        _check_args("sbatch_args", self.sbatch_args)
        timeout = self.queue_timeout
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or timeout <= 0):
            raise ValueError(f"Slurm(queue_timeout=...) must be positive seconds or None, got "
                             f"{timeout!r}")
        if self.executable is not None and not isinstance(self.executable, RemoteExecutable):
            raise TypeError(f"Slurm(executable=...) takes an rp.RemoteExecutable, got "
                            f"{self.executable!r}")
        if self.executable is not None and self.python is not None:
            # The worker's import path names the standard library of the bundle's python.
            raise ValueError(
                "Slurm(executable=..., python=...): give the interpreter to the executable "
                "instead (RemoteExecutable.existing_on_host(host, exe.path, python=...)), "
                "which asks that python for its standard library")

    @property
    def needs_network(self) -> bool:
        """Always: a step or job may run on any node, so the worker connects back over TCP
        + TLS even when Slurm places it on the master's own node."""
        return True

    @property
    def connect_back(self) -> ConnectBack:
        """Where the worker finds the master: inside an allocation, the address of the node
        that launched the step (``SLURM_LAUNCH_NODE_IPADDR``, the master's node as Slurm
        reaches it); a job of its own falls back to the master's host name (the host it was
        submitted from)."""
        if os.environ.get("SLURM_JOB_ID"):
            return STEP_CONNECT_BACK
        return ConnectBack()

    @property
    def can_use_prestarted(self) -> bool:
        return False

    def _local(self) -> Local:
        """The worker's command as a local worker's, run on the node."""
        exe = self.executable
        if exe is not None:
            # The bundle's isolated stub; it ignores its arguments (the bootstrap on its
            # stdin gets the worker's), which are there for ``ps``, as for any worker.
            return Local(command=exe.python_argv())
        return Local() if self.python is None else Local(python=self.python)

    def worker_command(self, name: str) -> list[str]:
        return self._local().worker_command(name)

    def worker_paths(
        self, sys_path: list[str], main_path: str | None
    ) -> tuple[list[str], str | None]:
        """The master's paths (shared files), or the bundle's import path and its copy of the
        main script."""
        if self.executable is None:
            return sys_path, main_path
        return self.executable.worker_paths(main_path, f"at {self.executable.path}")

    def _boot_input(self, name: str) -> bytes | None:
        """With a bundle: what the worker reads first on stdin (verify, then run)."""
        exe = self.executable
        if exe is None:
            return None
        return exe.boot_input(Local(command=[]).worker_command(name))

    async def launch(self, request: LaunchRequest) -> LaunchedProcess:
        # Imported here: every worker process imports this package, few need these.
        from ._slurm_job import JobOptions, submit
        from ._slurm_step import start_step

        if self.executable is None:
            request = replace(request, env=_worker_env(request.env))
        boot = self._boot_input(request.name)
        job_id = os.environ.get("SLURM_JOB_ID")
        if job_id:
            return await start_step(request, self.srun_argv(request.name), self._step_wait(),
                                    job_id, boot)
        return await submit(request, JobOptions(
            cpus_per_task=self.cpus_per_task, flags=self._job_flags(),
            sbatch_args=self.sbatch_args, queue_timeout=self.queue_timeout,
            redirect_stdout=request.redirect_stdout, boot=boot,
        ))

    def _step_wait(self) -> int:
        """Whole seconds a step may wait for free CPUs (``srun --immediate`` takes seconds)."""
        return max(1, math.ceil(STEP_WAIT if self.queue_timeout is None else self.queue_timeout))

    def srun_argv(self, name: str) -> list[str]:
        """The ``srun`` that starts one worker as a step of the current allocation.

        ``--immediate``: srun itself gives up waiting for CPUs after the bound, so a step
        request never outlives it, even when the master is killed meanwhile."""
        argv = ["srun", "-v", "--ntasks=1", "--nodes=1", "--exact",
                f"--immediate={self._step_wait()}",
                f"--cpus-per-task={self.cpus_per_task}", f"--job-name={name}"]
        for flag, value in (("mem", self.mem), ("gres", self.gres), ("nodelist", self.nodelist)):
            if value is not None:
                argv.append(f"--{flag}={value}")
        return [*argv, *self.srun_args, "--"]

    def _job_flags(self) -> list[tuple[str, str | None]]:
        return [("partition", self.partition), ("time", self.time), ("account", self.account),
                ("qos", self.qos), ("mem", self.mem), ("gres", self.gres),
                ("nodelist", self.nodelist)]


def _worker_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """The spawn's ``env`` with this ``rpc_parallel`` first on ``PYTHONPATH``: the worker must
    import the master's own copy (the master may have found it through an in-process
    ``sys.path`` change that no environment variable carries)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = dict(env or {})
    rest = result.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    result["PYTHONPATH"] = os.pathsep.join([root, *([rest] if rest else [])])
    return result
