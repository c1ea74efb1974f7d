"""Workers as jobs of their own, submitted with ``sbatch`` from outside an allocation, on
the real single-node cluster (``slurm_cluster``)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import rpc_parallel as rp
from rpc_parallel._state import process
from rpc_parallel.launch import _slurm_job
from tests.harness.slurm import PARTITION, URGENT, SlurmCluster

from .support import ROOT, master_env, python, tls_link, until, wait_for
from .workers import Fragile, Node, every_kind, expected


def _job_of(cluster: SlurmCluster, name: str) -> str:
    out = cluster.command(["squeue", "-h", "-n", name, "-o", "%i"]).stdout.split()
    assert len(out) == 1, out
    return out[0]


async def test_jobs_serve_every_kind_over_tls_and_keep_the_secret_off_disk(
    outside: SlurmCluster,
) -> None:
    handles = await asyncio.gather(*(Node.spawn(i, how=rp.Slurm(time="5")) for i in range(2)))
    try:
        places = [await h.run(Node.where) for h in handles]
        jobs = [_job_of(outside, h.name) for h in handles]
        assert [p.job_id for p in places] == jobs  # each worker is its own job
        for offset, handle in enumerate(handles):
            assert tls_link(handle).version() == "TLSv1.3"  # the remote path, on one node
            assert await every_kind(handle) == expected(offset)
        # The secret is nowhere Slurm keeps the job: not in the script, its environment
        # or its command; the worker deleted its 0600 configuration file.
        secret = process().secret
        for job in jobs:
            script = outside.command(["scontrol", "write", "batch_script", job, "-"]).stdout
            shown = outside.command(["scontrol", "show", "job", "-d", job]).stdout
            for text in (script, shown):
                assert secret.hex() not in text and secret not in text.encode(errors="replace")
            assert "exec " in script and "-m rpc_parallel worker" in script
            assert "Requeue=0" in shown  # a failed worker's job is not run again
        directory = _slurm_job._Private.path
        assert directory is not None and directory.stat().st_mode & 0o777 == 0o700
        assert not list(directory.glob("*.config")), list(directory.iterdir())
        for place in places:
            assert secret not in _proc_file(place.pid, "cmdline")
            assert secret.hex().encode() not in _proc_file(place.pid, "environ")
    finally:
        for handle in handles:
            await handle.close()
    await until(lambda: not outside.jobs(), 20, "the jobs to end after close")


async def test_a_bad_partition_is_a_spawn_error_from_sbatch(outside: SlurmCluster) -> None:
    with pytest.raises(rp.SpawnError) as caught:
        await Node.spawn(0, how=rp.Slurm(partition="nosuchpartition"))
    assert "sbatch refused the job" in str(caught.value)
    assert "invalid partition" in str(caught.value).lower()


async def test_a_job_over_a_partition_limit_fails_with_the_schedulers_reason(
    outside: SlurmCluster,
) -> None:
    outside.command(["scontrol", "update", "PartitionName=debug", "MaxTime=5"])
    try:
        started = time.monotonic()
        with pytest.raises(rp.SpawnError) as caught:
            await Node.spawn(0, how=rp.Slurm(time="30"))
        assert time.monotonic() - started < 20
    finally:
        outside.command(["scontrol", "update", "PartitionName=debug", "MaxTime=INFINITE"])
    message = str(caught.value)
    assert "can never start" in message, message
    # Slurm 22.05 says PartitionConfig here; others say PartitionTimeLimit.
    assert "PartitionConfig" in message or "PartitionTimeLimit" in message, message


async def test_queue_timeout_bounds_the_pending_time_only(outside: SlurmCluster) -> None:
    blocker = outside.sbatch(["-n8", "-t5", "--wrap", "sleep 6", "-o", "/dev/null"])
    try:
        await until(lambda: "R" in outside.command(
            ["squeue", "-h", "-j", str(blocker), "-o", "%t"]).stdout, 30, "the blocker to run")
        with pytest.raises(rp.SpawnError) as caught:
            await Node.spawn(0, how=rp.Slurm(queue_timeout=2))
        message = str(caught.value)
        assert "still PENDING after queue_timeout (2 s)" in message, message
        assert "the scheduler's reason:" in message, message
        assert outside.jobs() == [str(blocker)]  # the timed-out job was cancelled
        # connection_timeout does not count the pending time: the blocker holds every CPU
        # for seconds more, far beyond a 1 s connection_timeout.
        async with await Node.spawn(5, how=rp.Slurm(), connection_timeout=1.0) as handle:
            assert await handle.run(Node.add, 1) == 6
    finally:
        outside.command(["scancel", str(blocker)], check=False)


async def test_a_cancelled_job_is_worker_died_with_slurms_state(outside: SlurmCluster) -> None:
    handle = await Node.spawn(0, how=rp.Slurm())
    job = _job_of(outside, handle.name)
    call = asyncio.ensure_future(handle.run(Node.sleep, 60.0))
    await asyncio.sleep(0.2)  # the call is in flight
    outside.command(["scancel", job])
    with pytest.raises(rp.WorkerDied) as caught:
        await asyncio.wait_for(call, 30)
    text = str(caught.value)
    assert f"Slurm job {job} CANCELLED" in text, text
    await handle.close()


def test_a_killed_master_leaves_nothing_in_the_queue(outside: SlurmCluster, tmp_path: Path) -> None:
    master = subprocess.Popen(
        [python(), str(ROOT / "tests/slurm/master_hold.py"), "--pending"],
        env=master_env(outside, **{_slurm_job.DIRECTORY_VARIABLE: str(tmp_path)}),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert master.stdout is not None and master.stderr is not None
        ready = master.stdout.readline()
        assert ready.startswith("READY"), master.stderr.read()
        # Two running workers and one job pending behind them (it wants all 8 CPUs).
        wait_for(lambda: len(outside.jobs()) == 3, 20, "the pending job to be submitted")
        states = outside.command(["squeue", "-h", "-o", "%t"]).stdout.split()
        assert sorted(states) == ["PD", "R", "R"], states
        master.send_signal(signal.SIGKILL)
        master.wait(10)
        # The running workers notice and exit; the watchdog cancels the pending job.
        wait_for(lambda: not outside.jobs(), 30, "the killed master's jobs to leave the queue")
        wait_for(lambda: not list(tmp_path.iterdir()), 10, "the watchdog to remove its directory")
        wait_for(lambda: not _watchdogs(tmp_path), 10, "the watchdog to exit")
    finally:
        if master.poll() is None:
            master.kill()
            master.wait()


def _proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _watchdogs(directory: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    argv = file.read()
            except OSError:
                continue
            if b"_slurm_watchdog" in argv and str(directory).encode() in argv:
                found.append(int(entry))
    return found


async def test_a_job_out_of_time_is_worker_died_with_timeout(outside: SlurmCluster) -> None:
    handle = await Node.spawn(0, how=rp.Slurm(time="10"))
    job = _job_of(outside, handle.name)
    call = asyncio.ensure_future(handle.run(Node.sleep, 300.0))
    await asyncio.sleep(0.2)  # the call is in flight
    # Shorten its limit to a minute it has nearly used; slurmctld enforces limits on its
    # periodic check (every 30 s in 22.05), so this takes up to about a minute.
    outside.command(["scontrol", "update", f"JobId={job}", "TimeLimit=0:01"])
    with pytest.raises(rp.WorkerDied) as caught:
        await asyncio.wait_for(call, 120)
    text = str(caught.value)
    assert f"Slurm job {job} TIMEOUT" in text, text
    await handle.close()


async def test_env_and_cwd_reach_a_job_and_a_crash_before_registering_is_reported(
    outside: SlurmCluster, tmp_path: Path,
) -> None:
    workdir = tmp_path.parent / f"{tmp_path.name}-cwd"
    workdir.mkdir()
    try:
        async with await Fragile.spawn(None, how=rp.Slurm(), env={"RP_X": "42"},
                                       cwd=workdir) as handle:
            found = await handle.run(Fragile.environment, "RP_X")
            assert (found.cwd, found.value) == (str(workdir), "42")
        with pytest.raises(rp.SpawnError) as caught:
            await Fragile.spawn(None, how=rp.Slurm(), env={"RP_TEST_FAIL": "import"})
        text = str(caught.value)
        assert "exited with code 1" in text and "FAILED (reason: NonZeroExitCode" in text, text
        assert "boom before registering" in caught.value.stderr_tail
        with pytest.raises(rp.SpawnError, match="not a directory"):
            await Fragile.spawn(None, how=rp.Slurm(), cwd=tmp_path / "missing")
    finally:
        workdir.rmdir()


async def test_a_jobs_output_is_forwarded_with_its_name(
    outside: SlurmCluster, capsys: pytest.CaptureFixture[str],
) -> None:
    async with await Node.spawn(0, how=rp.Slurm()) as handle:
        await handle.run(Node.shout, "hello")
        seen = {"out": "", "err": ""}

        def both() -> bool:
            captured = capsys.readouterr()
            seen["out"] += captured.out
            seen["err"] += captured.err
            return f"[{handle.name}] out: hello" in seen["out"] \
                and f"[{handle.name}] err: hello" in seen["err"]

        await until(both, 10, "the job's output through its files")


@pytest.mark.parametrize("mode", ["CANCEL", "REQUEUE"])
async def test_a_preempted_job_is_worker_died_with_slurms_state(
    outside: SlurmCluster, mode: str,
) -> None:
    """The worker's job runs in the default partition; a job of the higher priority tier
    that needs every CPU preempts it: the call in flight fails with ``WorkerDied`` naming
    the state, and nothing of the worker stays in the queue. Where the cluster requeues
    preempted jobs (``REQUEUE``), the worker's job (``--no-requeue``) ends all the same."""
    outside.command(["scontrol", "update", f"PartitionName={PARTITION}", f"PreemptMode={mode}"])
    try:
        await _preempted(outside)
    finally:
        outside.command(["scontrol", "update", f"PartitionName={PARTITION}",
                         "PreemptMode=CANCEL"])


async def _preempted(outside: SlurmCluster) -> None:
    handle = await Node.spawn(0, how=rp.Slurm(partition=PARTITION))
    job = _job_of(outside, handle.name)
    call = asyncio.ensure_future(handle.run(Node.sleep, 120.0))
    started = time.monotonic()
    urgent = await asyncio.to_thread(outside.sbatch, [
        f"--partition={URGENT}", f"-n{outside.cpus}", "-t5", "--wrap", "true",
        "-o", "/dev/null"])
    with pytest.raises(rp.WorkerDied) as caught:
        await asyncio.wait_for(call, 60)
    assert time.monotonic() - started < 45  # the scheduler's cadence, not the call's 120 s
    text = str(caught.value)
    assert f"Slurm job {job} PREEMPTED" in text, text
    await handle.close()
    await until(lambda: job not in outside.jobs(), 20, "the preempted job to leave the queue")
    state = outside.command(["scontrol", "show", "job", "-o", str(urgent)]).stdout
    assert "JobState=RUNNING" in state or "JobState=COMPLETED" in state, state
