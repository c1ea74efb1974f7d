"""Reading the allocation from ``SLURM_*`` (compressed host and count lists), Slurm's job
states, and ``rp.Slurm``'s checks: pure functions, plus one run on the real cluster."""

from __future__ import annotations

import json
import subprocess

import pytest

import rpc_parallel as rp
from rpc_parallel.launch._slurm_commands import JobEnd, never_starts
from rpc_parallel.launch.slurm import expand_counts, expand_hostlist, slurm_allocation
from tests.harness.slurm import SlurmCluster

from .support import ROOT, master_env, python


@pytest.mark.parametrize(("text", "hosts"), [
    ("localhost", ["localhost"]),
    ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
    ("node[8-11]", ["node8", "node9", "node10", "node11"]),
    ("a[1-2],b,c[009-010]", ["a1", "a2", "b", "c009", "c010"]),
    ("rack[1-2]-n[1-2]", ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]),
    ("gpu-[1,3]x", ["gpu-1x", "gpu-3x"]),
])
def test_expand_hostlist(text: str, hosts: list[str]) -> None:
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize("text", ["node[1-", "node]1", "node[a-b]", "node[3-1]", "n[1-2]]"])
def test_a_bad_hostlist_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="Slurm host list"):
        expand_hostlist(text)


@pytest.mark.parametrize(("text", "counts"), [
    ("4", [4]), ("2(x3)", [2, 2, 2]), ("2(x3),1", [2, 2, 2, 1]), ("8,4(x2)", [8, 4, 4]),
])
def test_expand_counts(text: str, counts: list[int]) -> None:
    assert expand_counts(text) == counts


@pytest.mark.parametrize("text", ["", "2(x)", "x", "2(x3", "-1"])
def test_a_bad_count_list_is_a_clear_error(text: str) -> None:
    with pytest.raises(ValueError, match="Slurm count list"):
        expand_counts(text)


def test_slurm_allocation_from_the_environment() -> None:
    assert slurm_allocation({}) is None
    allocation = slurm_allocation({
        "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "node[01-03,07]",
        "SLURM_JOB_CPUS_PER_NODE": "8(x3),4", "SLURM_TASKS_PER_NODE": "2(x3),1",
        "SLURM_CPUS_PER_TASK": "4",
    })
    assert allocation is not None
    assert allocation.job_id == "42"
    assert allocation.nodes == ("node01", "node02", "node03", "node07")
    assert allocation.cpus_per_node == (8, 8, 8, 4)
    assert allocation.tasks_per_node == (2, 2, 2, 1)
    assert (allocation.tasks, allocation.cpus, allocation.cpus_per_task) == (7, 28, 4)
    assert allocation.workers() == 7 and allocation.workers("cpu") == 28
    with pytest.raises(ValueError, match="per must be"):
        allocation.workers("node")


def test_slurm_allocation_errors_name_the_variable() -> None:
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST is not"):
        slurm_allocation({"SLURM_JOB_ID": "1"})
    with pytest.raises(ValueError, match="SLURM_TASKS_PER_NODE lists 1 nodes"):
        slurm_allocation({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n[1-2]",
                          "SLURM_TASKS_PER_NODE": "3"})
    with pytest.raises(ValueError, match="SLURM_CPUS_PER_TASK"):
        slurm_allocation({"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n1",
                          "SLURM_CPUS_PER_TASK": "zero"})


def test_slurm_allocation_inside_a_real_salloc(slurm_cluster: SlurmCluster) -> None:
    code = ("import json; from rpc_parallel.launch.slurm import slurm_allocation as a; "
            "x = a(); print(json.dumps([x.job_id, x.nodes, x.tasks, x.cpus]))")
    result = subprocess.run(["timeout", "60", "salloc", "-N1", "-n3", "-t1", python(), "-c", code],
                            env=master_env(slurm_cluster), cwd=ROOT, capture_output=True,
                            text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    job_id, nodes, tasks, cpus = json.loads(result.stdout)
    assert job_id.isdigit() and nodes == ["localhost"] and tasks == 3 and cpus == 3


def test_job_end_from_scontrol() -> None:
    line = ("JobId=7 JobName=w JobState=TIMEOUT Reason=TimeLimit Dependency=(null) "
            "ExitCode=0:15 RunTime=00:01:00")
    end = JobEnd.parse("7", line)
    assert (end.state, end.reason, end.returncode) == ("TIMEOUT", "TimeLimit", -15)
    assert end.describe() == "Slurm job 7 TIMEOUT (reason: TimeLimit, signal SIGTERM)"
    failed = JobEnd.parse("8", "JobId=8 JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0")
    assert failed.returncode == 3
    assert failed.describe() == "Slurm job 8 FAILED (reason: NonZeroExitCode, exit code 3)"


def test_pending_reasons_that_never_resolve() -> None:
    for reason in ("PartitionConfig", "PartitionTimeLimit", "InvalidQOS", "QOSMaxCpuPerJobLimit",
                   "AssocMaxWallDurationPerJobLimit", "JobHeldUser"):
        assert never_starts(reason), reason
    for reason in ("Resources", "Priority", "None", "AssocGrpCpuLimit", "ReqNodeNotAvail"):
        assert not never_starts(reason), reason


def test_slurm_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="cpus_per_task"):
        rp.Slurm(cpus_per_task=0)
    with pytest.raises(TypeError, match="srun_args"):
        rp.Slurm(srun_args="--exclusive")  # a str is a Sequence[str]: refused at run time
    with pytest.raises(TypeError, match="partition"):
        rp.Slurm(partition="")
    with pytest.raises(ValueError, match="queue_timeout"):
        rp.Slurm(queue_timeout=-1)
    with pytest.raises(TypeError):
        rp.Slurm("debug")  # type: ignore[call-arg]


def test_srun_argv_passes_the_options_through() -> None:
    how = rp.Slurm(cpus_per_task=2, mem="1G", gres="gpu:1", nodelist="n[1-2]",
                   srun_args=["--comment=x"], partition="ignored-in-steps")
    argv = how.srun_argv("w")
    assert argv[:5] == ["srun", "-v", "--ntasks=1", "--nodes=1", "--exact"]
    for flag in ("--cpus-per-task=2", "--mem=1G", "--gres=gpu:1", "--nodelist=n[1-2]",
                 "--comment=x", "--job-name=w"):
        assert flag in argv
    assert argv[-1] == "--" and not any("partition" in a for a in argv)
    assert isinstance(how, rp.launch.Launcher) and how.needs_network
