"""Workers as job steps of an allocation, on the real single-node cluster (``slurm_cluster``).

The tests here run "inside" an allocation made with ``salloc --no-shell`` (``SLURM_JOB_ID``
set in this process), or run a master under ``salloc`` as Slurm users do.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import rpc_parallel as rp
from rpc_parallel._master import current_master
from tests.harness.slurm import URGENT, SlurmCluster

from .support import (
    ROOT,
    allocation,
    master_env,
    python,
    steps,
    tls_link,
    until,
    wait_for,
    wait_queue_empty,
)
from .workers import Fragile, Node, every_kind, expected


async def test_workers_are_steps_connect_back_over_tls_and_serve_every_kind(
    slurm_cluster: SlurmCluster,
) -> None:
    with allocation(slurm_cluster, 4) as job_id:
        handles = await asyncio.gather(*(Node.spawn(i, how=rp.Slurm()) for i in range(3)))
        try:
            places = [await h.run(Node.where) for h in handles]
            assert {p.job_id for p in places} == {job_id}
            assert len({p.step_id for p in places}) == 3, places  # one step each
            assert sorted(steps(slurm_cluster)) == sorted(f"{job_id}.{p.step_id}" for p in places)
            # Forced on one node: the remote path, TCP + TLS 1.3 with the app's certificate.
            assert current_master().network_server is not None
            for handle in handles:
                assert tls_link(handle).version() == "TLSv1.3"
                assert any(part.startswith("tls:") for part in handle.address.split())
            for offset, handle in enumerate(handles):
                assert await every_kind(handle) == expected(offset)
        finally:
            for handle in handles:
                await handle.close()
        await until(lambda: not steps(slurm_cluster), 15, "the steps to end after close")


async def test_step_options_reach_srun(slurm_cluster: SlurmCluster) -> None:
    with allocation(slurm_cluster, 4):
        how = rp.Slurm(cpus_per_task=2, nodelist="localhost", mem="64M",
                       srun_args=["--comment=rp-test"])
        async with await Node.spawn(0, how=how) as handle:
            place = await handle.run(Node.where)
            assert place.cpus == "2"
            step = slurm_cluster.command(["scontrol", "show", "step", "-o",
                                          f"{place.job_id}.{place.step_id}"]).stdout
            assert "NodeList=localhost" in step and "cpu=2" in step, step


async def test_a_step_that_cannot_get_cpus_is_a_clear_spawn_error(
    slurm_cluster: SlurmCluster,
) -> None:
    with allocation(slurm_cluster, 2) as job_id:
        first, second = await asyncio.gather(*(Node.spawn(i, how=rp.Slurm()) for i in range(2)))
        try:
            sruns = _sruns(job_id)
            started = time.monotonic()
            with pytest.raises(rp.SpawnError) as caught:
                await Node.spawn(2, how=rp.Slurm(queue_timeout=2))
            assert time.monotonic() - started < 15
            message = str(caught.value)
            assert f"no job step could start in allocation {job_id} within 2 s" in message
            assert "held by other steps" in message
            # Its srun is gone (withdrawn and reaped), and the two workers still serve.
            assert _sruns(job_id) == sruns
            assert await first.run(Node.add, 1) == 1
        finally:
            await first.close()
            if "caught" not in locals():
                await second.close()
        # Its CPU is free again at once (the step was cancelled, not left to wind down).
        async with await Node.spawn(3, how=rp.Slurm(queue_timeout=10)) as third:
            assert await third.run(Node.add, 1) == 4
        await second.close()


async def test_a_cancelled_step_is_worker_died_with_slurms_words(
    slurm_cluster: SlurmCluster,
) -> None:
    with allocation(slurm_cluster, 2):
        handle = await Node.spawn(0, how=rp.Slurm())
        place = await handle.run(Node.where)
        call = asyncio.ensure_future(handle.run(Node.sleep, 60.0))
        await asyncio.sleep(0.2)  # the call is in flight
        slurm_cluster.command(["scancel", f"{place.job_id}.{place.step_id}"])
        with pytest.raises(rp.WorkerDied) as caught:
            await asyncio.wait_for(call, 20)
        text = str(caught.value)
        assert f"Slurm step {place.job_id}.{place.step_id} CANCELLED" in text, text
        assert caught.value.signal == signal.SIGKILL, text  # srun's 137, as a signal
        assert caught.value.function is not None and "sleep" in caught.value.function
        await handle.close()
        await until(lambda: not steps(slurm_cluster), 15, "the step to be gone")


def test_master_under_salloc_runs_three_steps(slurm_cluster: SlurmCluster) -> None:
    result = subprocess.run(
        ["timeout", "120", "salloc", "-N1", "-n4", "-t5", python(),
         str(ROOT / "tests/slurm/master_steps.py")],
        env=master_env(slurm_cluster), cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [line["offset"] for line in lines] == [0, 1, 2], result.stdout
    for line in lines:
        assert line["job"] == line["allocation"]
        assert line["results"] == expected(line["offset"])
    assert len({line["step"] for line in lines}) == 3
    wait_queue_empty(slurm_cluster)


def test_a_killed_master_leaves_no_step_running(slurm_cluster: SlurmCluster) -> None:
    with allocation(slurm_cluster, 2) as job_id:
        env = master_env(slurm_cluster, SLURM_JOB_ID=job_id, SLURM_JOB_NODELIST="localhost")
        master = subprocess.Popen(
            [python(), str(ROOT / "tests/slurm/master_hold.py"), "--pending"], env=env,
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert master.stdout is not None
            ready = master.stdout.readline()
            assert ready.startswith("READY"), master.stderr.read() if master.stderr else ""
            assert len(steps(slurm_cluster)) == 2
            # A third worker's step waits for a CPU (both are taken).
            assert master.stdout.readline().startswith("SUBMITTING")
            wait_for(lambda: "PENDING" in slurm_cluster.command(
                ["scontrol", "show", "step", "-o"]).stdout, 10, "the third step to wait")
            master.send_signal(signal.SIGKILL)
            master.wait(10)
            # The allocation lives on; the workers notice the master's death and their
            # steps end; the waiting srun gives up by itself (--immediate); every srun of
            # the dead master exits.
            wait_for(lambda: not steps(slurm_cluster), 20, "the steps of the killed master to end")
            wait_for(lambda: not _sruns(job_id), 20, "the sruns to exit")
            assert job_id in slurm_cluster.jobs()
        finally:
            if master.poll() is None:
                master.kill()
                master.wait()


def _sruns(job_id: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as file:
                    argv = file.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"srun") and b"--exact" in argv \
                    and os.environ.get("SLURM_JOB_ID", job_id) == job_id:
                found.append(int(entry))
    return found


async def test_env_and_cwd_reach_a_step_and_a_crash_before_registering_is_reported(
    slurm_cluster: SlurmCluster, tmp_path: Path,
) -> None:
    with allocation(slurm_cluster, 2):
        async with await Fragile.spawn(None, how=rp.Slurm(), env={"RP_X": "7"},
                                       cwd=tmp_path) as handle:
            found = await handle.run(Fragile.environment, "RP_X")
            assert (found.cwd, found.value) == (str(tmp_path), "7")
        with pytest.raises(rp.SpawnError) as caught:
            await Fragile.spawn(None, how=rp.Slurm(), env={"RP_TEST_FAIL": "import"})
        assert "exited with code 1" in str(caught.value), str(caught.value)
        assert "boom before registering" in caught.value.stderr_tail
        # srun's own chatter (-v) is not in the tail; its errors are.
        assert "defined options" not in caught.value.stderr_tail


async def test_a_wrap_prefix_runs_inside_the_step(slurm_cluster: SlurmCluster) -> None:
    with allocation(slurm_cluster, 2):
        how = rp.Wrap(["env", "RP_WRAPPED=yes"], how=rp.Slurm())
        async with await Fragile.spawn(None, how=how) as handle:
            assert (await handle.run(Fragile.environment, "RP_WRAPPED")).value == "yes"
            assert tls_link(handle).version() == "TLSv1.3"


async def test_an_allocation_that_is_gone_is_a_spawn_error_with_sruns_words(
    slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "999999")
    with pytest.raises(rp.SpawnError) as caught:
        await Node.spawn(0, how=rp.Slurm())
    assert "srun could not start worker" in str(caught.value)
    assert "allocation 999999" in str(caught.value)
    assert "Invalid job id" in caught.value.stderr_tail, caught.value.stderr_tail


async def test_a_steps_output_is_forwarded_with_its_name(
    slurm_cluster: SlurmCluster, capsys: pytest.CaptureFixture[str],
) -> None:
    with allocation(slurm_cluster, 2):
        async with await Node.spawn(0, how=rp.Slurm()) as handle:
            await handle.run(Node.shout, "hi")
            seen = {"out": "", "err": ""}

            def both() -> bool:
                captured = capsys.readouterr()
                seen["out"] += captured.out
                seen["err"] += captured.err
                return f"[{handle.name}] out: hi" in seen["out"] \
                    and f"[{handle.name}] err: hi" in seen["err"]

            await until(both, 10, "the step's output through srun")


async def test_a_preempted_allocation_is_worker_died_with_slurms_words(
    slurm_cluster: SlurmCluster,
) -> None:
    """The allocation is in the default partition; a job of the higher priority tier that
    needs every CPU preempts it: the step's call fails with ``WorkerDied`` naming the
    preemption, and the allocation leaves the queue."""
    with allocation(slurm_cluster, 2) as job_id:
        handle = await Node.spawn(0, how=rp.Slurm())
        place = await handle.run(Node.where)
        call = asyncio.ensure_future(handle.run(Node.sleep, 120.0))
        started = time.monotonic()
        await asyncio.to_thread(slurm_cluster.sbatch, [
            f"--partition={URGENT}", f"-n{slurm_cluster.cpus}", "-t5", "--wrap", "true",
            "-o", "/dev/null"])
        with pytest.raises(rp.WorkerDied) as caught:
            await asyncio.wait_for(call, 60)
        assert time.monotonic() - started < 45
        text = str(caught.value)
        # The step's own state is CANCELLED; srun says why (the job's state is PREEMPTED).
        assert f"Slurm step {job_id}.{place.step_id} CANCELLED due to preemption" in text, text
        await handle.close()
        await until(lambda: job_id not in slurm_cluster.jobs(), 20,
                    "the preempted allocation to leave the queue")
