"""A throw-away single-node Slurm cluster: munged, slurmctld and slurmd as children of this
process (foreground), from Debian's packages, no systemd, no cgroups, ``SlurmUser=root``.

Everything lives in one temporary directory: configuration, munge key and socket, spool,
logs. Ports are free ports picked at start, the cluster name carries the pid, and the
environment for client commands sets ``SLURM_CONF`` (``/etc/slurm`` is not touched), so
concurrent runs never meet. ``stop()`` cancels every job, stops the daemons (a zombie counts
as dead), kills anything still mentioning the directory and removes it.

Two partitions over the node: ``debug`` (the default) and ``urgent``, of a higher priority
tier, whose jobs preempt (cancel) the ``debug`` jobs holding the CPUs they need.

Pitfalls (found running it here): steps sharing one allocation need ``--exact`` (a plain
``srun -n1`` takes every CPU and the next step waits forever); advertising more CPUs than the
machine has needs ``SlurmdParameters=config_overrides``; bound every ``srun``/``sbatch``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _proc

NODE = "localhost"
PARTITION = "debug"
URGENT = "urgent"
"""A partition of a higher priority tier: its jobs preempt (cancel) the default partition's
jobs they need the CPUs of (``PreemptType=preempt/partition_prio``, ``PreemptMode=CANCEL``)."""
COMMAND_TIMEOUT = 60.0
"""Default bound on one ``srun``/``sbatch``/``squeue`` call."""


@dataclass
class SlurmCluster:
    cpus: int = 8
    directory: Path = field(default_factory=Path)
    env: dict[str, str] = field(default_factory=dict)
    """The environment for Slurm client commands (``os.environ`` plus ``SLURM_CONF``)."""
    _daemons: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.directory / "slurm.conf"

    @property
    def daemon_pids(self) -> list[int]:
        return [daemon.pid for daemon in self._daemons]

    def command(self, argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (``squeue``, ``scancel``...) against this cluster."""
        return _proc.run(argv, timeout=timeout, check=check, env=self.env)

    def srun(self, args: Sequence[str], *, timeout: float = COMMAND_TIMEOUT,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.command(["srun", *args], timeout=timeout, check=check)

    def sbatch(self, args: Sequence[str], *, timeout: float = COMMAND_TIMEOUT) -> int:
        """Submit a job; returns its id."""
        out = self.command(["sbatch", "--parsable", *args], timeout=timeout).stdout
        return int(out.strip().split(";")[0])

    def jobs(self) -> list[str]:
        return self.command(["squeue", "-h", "-o", "%i"], timeout=10).stdout.split()

    def start(self, timeout: float = 60.0) -> SlurmCluster:
        _proc.require_root("a Slurm test cluster")
        binaries = _proc.require_binaries("a Slurm test cluster", "munged", "mungekey", "munge",
                                          "slurmctld", "slurmd", "srun", "sinfo", "squeue",
                                          "scancel", "sbatch")
        self.directory = Path(tempfile.mkdtemp(prefix=f"rp-slurm-{os.getpid()}-"))
        try:
            self.directory.chmod(0o755)  # the munge user must reach its socket below it
            self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
            self._start_munge(binaries)
            self._write_conf()
            self._spawn([binaries["slurmctld"], "-D", "-c", "-f", str(self.conf)])
            self._spawn([binaries["slurmd"], "-D", "-N", NODE, "-f", str(self.conf)])
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, argv: Sequence[str], **options: object) -> None:
        self._daemons.append(subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=self.env, **options))  # type: ignore[call-overload]

    def _start_munge(self, binaries: dict[str, str]) -> None:
        munge = self.directory / "munge"
        munge.mkdir(mode=0o755)
        shutil.chown(munge, "munge", "munge")
        key = munge / "munge.key"
        _proc.run(["runuser", "-u", "munge", "--", binaries["mungekey"], "--create",
                   f"--keyfile={key}"])
        self._spawn([binaries["munged"], "-F", f"--socket={munge}/munge.socket",
                     f"--key-file={key}", f"--log-file={munge}/munged.log",
                     f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/munged.seed"],
                    user="munge", group="munge", extra_groups=[])

        def answers() -> bool:
            credential = _proc.run([binaries["munge"], "-n", "-S", f"{munge}/munge.socket"],
                                   check=False, timeout=5)
            return credential.returncode == 0

        _proc.wait_until(answers, 10, "munged to answer", 0.1)

    def _write_conf(self) -> None:
        d = self.directory
        for sub in ("log", "run", "spool/ctld", "spool/d"):
            (d / sub).mkdir(parents=True)
        with open("/proc/meminfo") as meminfo:
            total_kib = int(meminfo.readline().split()[1])
        self.conf.write_text(_CONF.format(
            d=d, node=NODE, cpus=self.cpus, memory=max(total_kib // 1024 - 512, 256),
            cluster=f"rp{os.getpid()}", ctld_port=_proc.free_tcp_port(""),
            slurmd_port=_proc.free_tcp_port(""), partition=PARTITION, urgent=URGENT))

    def _wait_ready(self, timeout: float) -> None:
        def node_up() -> bool:
            for daemon in self._daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args!r} exited with {daemon.returncode}: "
                                       f"{self.logs()}")
            result = self.command(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], timeout=10,
                                  check=False)
            return result.stdout.strip() in ("idle", "mixed", "allocated")

        try:
            _proc.wait_until(node_up, timeout, "the Slurm node to be idle", 0.2)
            self.srun(["-n1", "-t1", "true"], timeout=30)
        except (TimeoutError, RuntimeError) as error:
            raise RuntimeError(f"Slurm did not come up: {error}; logs: {self.logs()}") from None

    def logs(self) -> str:
        texts = []
        for path in [*sorted(self.directory.glob("log/*.log")), self.directory / "munge/munged.log"]:
            try:
                texts.append(f"--- {path.name}\n{path.read_text()[-1500:]}")
            except OSError:
                continue
        return "\n".join(texts)

    def stop(self) -> None:
        """Cancel all jobs, stop the daemons, kill leftovers, remove the directory."""
        if self._daemons and all(d.poll() is None for d in self._daemons):
            try:
                jobs = self.jobs()
                if jobs:
                    self.command(["scancel", *jobs], timeout=10, check=False)
                _proc.wait_until(lambda: not self.jobs(), 20, "the test jobs to end", 0.1)
            except (TimeoutError, RuntimeError):
                pass  # the daemons are stopped below either way
        for daemon in reversed(self._daemons):
            _proc.stop_popen(daemon)
        if self.directory != Path():
            _proc.stop_pids(_proc.processes_mentioning(str(self.directory)))
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_CONF = """\
ClusterName={cluster}
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation={d}/spool/ctld
SlurmdSpoolDir={d}/spool/d
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName={urgent} Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10
"""
