"""Workers as Slurm job steps: spawn 8 and get one result from each, in one run.

    .venv/bin/python benchmarks/slurm.py [--rounds N | --quick] [--cold] [--dask PYTHON]

Needs root and Debian's Slurm packages: it starts the test harness's single-node cluster
(``tests/harness/slurm.py``: 8 CPUs advertised, partition ``debug``) and stops it after.
Inside one allocation of 8 tasks (``salloc -n8``) it times, per round:

* ``srun true`` run 8 times, one after the other (``srun --exact -n1 true``): the floor of
  starting 8 steps;
* one local spawn (``rp.Local()``, a new process) and one call: the floor of starting a
  worker;
* 8 steps at once that only start Python and import the worker's code: on a machine with
  fewer cores than workers this, not ``srun``, is the floor;
* ``rp.Slurm()``: 8 workers spawned at once as steps, one call on each.

The workers' class (``Probe``) is in ``benchmarks/slurm_worker.py``, which imports what a
worker needs and no more; a worker imports its class's module, and this script's harness
imports are no part of starting one.

The target is ``rp.Slurm`` <= 1.5 x (8 x ``srun true`` + a local spawn): the ratio is taken
in each round (its four timings back to back) and the median over the rounds is reported,
with the range, so that a burst of load from elsewhere moves one round, not the result.

Bytecode: every process of the run reads and writes compiled modules under a private
``PYTHONPYCACHEPREFIX`` (warmed once before timing), even when the environment says
``PYTHONDONTWRITEBYTECODE``, as an installed package has its bytecode. Without it each
worker compiles rpc_parallel's sources as it starts, which doubles its CPU time; on a
machine with fewer cores than workers that CPU time *is* the spawn time, and it was the
main reason the ratio moved between runs (from 1.14 to 1.87). Outside the allocation it times ``rp.Slurm()`` spawning 8 workers as jobs of
their own (one run). With ``--dask PYTHON`` (an interpreter that has dask-jobqueue), it also
times dask-jobqueue's ``SLURMCluster`` scaling to 8 single-core workers (jobs of their own,
as dask-jobqueue submits them) and getting one result from each. Writes
benchmarks/results/slurm.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from slurm_worker import Probe  # noqa: E402  (a worker imports that module, not this script)

import rpc_parallel as rp  # noqa: E402

WORKER_CPU: list[float] = []
"""Each step worker's CPU time up to its first result (asked after the timing)."""
MASTER_CPU: list[float] = []
"""The master's CPU time in each round's 8 spawns and calls."""
SRUN_CPU: list[float] = []
"""The CPU time of each round's 8 ``srun`` processes (the master's children), whole life."""


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _srun_true_8() -> float:
    started = time.perf_counter()
    for _ in range(8):
        subprocess.run(["srun", "--exact", "-n1", "true"], check=True, timeout=60)
    return time.perf_counter() - started


def _srun_import_8() -> float:
    """8 steps at once, each starting the interpreter and importing the worker's code: what
    any Python worker started by Slurm pays before it does anything."""
    started = time.perf_counter()
    code = "import rpc_parallel._worker_main"
    steps = [subprocess.Popen(["srun", "--exact", "-n1", sys.executable, "-c", code])
             for _ in range(8)]
    for step in steps:
        if step.wait(60) != 0:
            raise RuntimeError("srun python failed")
    return time.perf_counter() - started


async def _local_spawn() -> float:
    """A new local worker process (named, so not a pre-started one) and one call."""
    started = time.perf_counter()
    async with await Probe.spawn(0, how=rp.Local(), name="probe-local") as worker:
        assert await worker.run(Probe.add, 1) == 2
        elapsed = time.perf_counter() - started
    return elapsed


async def _slurm_8() -> float:
    master, children = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    workers = await asyncio.gather(*(Probe.spawn(i, how=rp.Slurm()) for i in range(8)))
    results = await asyncio.gather(*(w.run(Probe.add, i) for i, w in enumerate(workers)))
    elapsed = time.perf_counter() - started
    MASTER_CPU.append(_cpu(resource.RUSAGE_SELF) - master)
    assert results == [i + 1 for i in range(8)]
    WORKER_CPU.extend(await asyncio.gather(*(w.run(Probe.cpu_seconds) for w in workers)))
    for worker in workers:
        await worker.close()
    await _steps_gone()
    SRUN_CPU.append(_cpu(resource.RUSAGE_CHILDREN) - children)
    return elapsed


def _steps_left() -> bool:
    out = subprocess.run(["squeue", "-h", "-s", "-j", os.environ["SLURM_JOB_ID"], "-o", "%i"],
                         capture_output=True, text=True, timeout=30).stdout.split()
    return any(step.split(".")[-1].isdigit() for step in out)


async def _steps_gone() -> None:
    """Until the closed workers' steps have left the allocation (bounded)."""
    for _ in range(200):
        if not await asyncio.to_thread(_steps_left):
            return
        await asyncio.sleep(0.05)
    raise RuntimeError("the benchmark's steps did not end")


async def _inner(rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"srun_true_x8": [], "local_spawn": [], "slurm_x8": [],
                                     "srun_python_import_x8": []}
    await _slurm_8()  # warm-up: the master's TLS identity and server, the page cache
    for figures in (WORKER_CPU, MASTER_CPU, SRUN_CPU):
        figures.clear()
    for _ in range(rounds):
        times["srun_true_x8"].append(await asyncio.to_thread(_srun_true_8))
        times["srun_python_import_x8"].append(await asyncio.to_thread(_srun_import_8))
        times["local_spawn"].append(await _local_spawn())
        times["slurm_x8"].append(await _slurm_8())
    times["worker_cpu"] = WORKER_CPU
    times["master_cpu_x8"] = MASTER_CPU
    times["srun_cpu_x8"] = SRUN_CPU
    return times


async def _jobs_8() -> None:
    """Outside an allocation: 8 workers as jobs of their own (what dask-jobqueue does)."""
    started = time.perf_counter()
    workers = await asyncio.gather(*(Probe.spawn(i, how=rp.Slurm()) for i in range(8)))
    results = await asyncio.gather(*(w.run(Probe.add, i) for i, w in enumerate(workers)))
    elapsed = time.perf_counter() - started
    assert results == [i + 1 for i in range(8)]
    for worker in workers:
        await worker.close()
    print(json.dumps(elapsed), flush=True)


_DASK = r"""
import json, sys, time
from dask.distributed import Client
from dask_jobqueue import SLURMCluster
started = time.perf_counter()
cluster = SLURMCluster(cores=1, processes=1, memory="1GB", queue="debug", walltime="00:05:00",
                       log_directory=sys.argv[1], job_extra_directives=["-o /dev/null"])
client = Client(cluster)
cluster.scale(8)
client.wait_for_workers(8, timeout=300)
workers = list(client.scheduler_info()["workers"])
futures = [client.submit(lambda x: x + 1, i, workers=[w], pure=False) for i, w in enumerate(workers)]
assert client.gather(futures) == [i + 1 for i in range(8)]
elapsed = time.perf_counter() - started
client.close(); cluster.close()
print(json.dumps(elapsed))
"""


def _dask(python: str, env: dict[str, str], directory: Path) -> float:
    result = subprocess.run([python, "-c", _DASK, str(directory)], env=env, capture_output=True,
                            text=True, timeout=600, cwd=directory)
    if result.returncode != 0:
        raise RuntimeError(f"dask-jobqueue failed: {result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def _outside(env: dict[str, str]) -> float:
    """8 jobs of their own, submitted from outside any allocation."""
    result = subprocess.run([sys.executable, __file__, "--jobs"], env=env, capture_output=True,
                            text=True, timeout=600, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"the run outside an allocation failed:\n{result.stderr[-3000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def _round_ratios(times: dict[str, list[float]]) -> list[float]:
    """Each round's rp.Slurm time over that round's floor (8 x srun true + local spawn)."""
    return [slurm / (srun + local) for slurm, srun, local in
            zip(times["slurm_x8"], times["srun_true_x8"], times["local_spawn"], strict=True)]


def _report(times: dict[str, list[float]], jobs: float, dask: float | None) -> dict[str, object]:
    median = {name: statistics.median(values) for name, values in times.items()}
    ratios = _round_ratios(times)
    ratio = statistics.median(ratios)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          f"{len(ratios)} rounds, medians:")
    print(f"8 x srun true            {median['srun_true_x8'] * 1000:8.1f} ms")
    print(f"local spawn + 1 call     {median['local_spawn'] * 1000:8.1f} ms")
    print(f"rp.Slurm: 8 steps + call {median['slurm_x8'] * 1000:8.1f} ms")
    print(f"ratio to (8 x srun true + local spawn): {ratio:.2f} (target <= 1.5; rounds "
          f"{min(ratios):.2f}-{max(ratios):.2f})")
    cpu = median["worker_cpu"]
    print(f"CPU of one step worker to its first result {cpu * 1000:6.1f} ms; 8 of them on "
          f"{os.cpu_count()} cores need at least {8 * cpu / (os.cpu_count() or 1) * 1000:.0f} ms "
          "(the floor on a quiet machine)")
    print(f"CPU of the master in the 8 spawns + calls {median['master_cpu_x8'] * 1000:6.1f} ms; "
          f"of the 8 srun processes {median['srun_cpu_x8'] * 1000:6.1f} ms")
    imports = median["srun_python_import_x8"]
    print(f"8 x srun python -c 'import rpc_parallel._worker_main' at once {imports * 1000:8.1f} ms"
          f" (rp.Slurm / this = {median['slurm_x8'] / imports:.2f})")
    result: dict[str, object] = {"rounds": times, "median_s": median, "ratio": ratio,
                                 "round_ratios": ratios,
                                 "ratio_to_interpreter_floor": median["slurm_x8"] / imports}
    print(f"rp.Slurm outside an allocation: 8 jobs + call {jobs * 1000:8.1f} ms")
    result["slurm_jobs_x8_s"] = jobs
    if dask is not None:
        print(f"dask-jobqueue SLURMCluster, 8 workers (jobs) + call {dask * 1000:8.1f} ms "
              f"({dask / jobs:.1f} x rp.Slurm's 8 jobs, {dask / median['slurm_x8']:.1f} x its "
              "8 steps)")
        result["dask_jobqueue_s"] = dask
    return result


def _with_bytecode(env: dict[str, str], directory: Path, dask: str | None) -> None:
    """Every process of the run keeps compiled modules under ``directory`` (as an installed
    package has them); one import of each side writes them before anything is timed."""
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(directory)
    warm = [(sys.executable, "import rpc_parallel._worker_main")]
    if dask:
        warm.append((dask, "import dask_jobqueue, distributed.cli.dask_worker"))
    for python, code in warm:
        subprocess.run([python, "-c", code], env=env, check=True, timeout=300, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 rounds (a smoke test)")
    parser.add_argument("--cold", action="store_true",
                        help="no private bytecode cache: workers compile their sources "
                             "when the environment says PYTHONDONTWRITEBYTECODE")
    parser.add_argument("--dask", metavar="PYTHON", help="an interpreter with dask-jobqueue")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.jobs:
        rp.start_app(_jobs_8)
        return
    if args.inner:
        async def inner() -> None:
            print(json.dumps(await _inner(args.rounds)), flush=True)

        rp.start_app(inner)
        return
    from tests.harness.slurm import SlurmCluster

    with SlurmCluster() as cluster:
        env = {**cluster.env, "PYTHONPATH": os.pathsep.join(sys.path[:2]),
               "RPC_PARALLEL_SLURM_DIR": str(cluster.directory / "rp")}
        if not args.cold:
            _with_bytecode(env, cluster.directory / "pycache", args.dask)
        if args.quick:
            args.rounds = 2
        run = subprocess.run(
            ["salloc", "-N1", "-n8", "-t10", sys.executable, __file__, "--inner",
             "--rounds", str(args.rounds)],
            env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if run.returncode != 0:
            raise SystemExit(f"the run inside salloc failed:\n{run.stderr[-3000:]}")
        times = json.loads(run.stdout.strip().splitlines()[-1])
        jobs = _outside(env)
        dask = _dask(args.dask, {k: v for k, v in env.items() if k != "PYTHONPATH"},
                     cluster.directory) if args.dask else None
    cache = "as the environment says" if args.cold else "a private cache, warmed before timing"
    print(f"bytecode: {cache} (PYTHONDONTWRITEBYTECODE="
          f"{os.environ.get('PYTHONDONTWRITEBYTECODE', 'unset')} here)")
    result = _report(times, jobs, dask)
    result["bytecode"] = "cold" if args.cold else "cached"
    out = ROOT / "benchmarks" / "results" / "slurm.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
