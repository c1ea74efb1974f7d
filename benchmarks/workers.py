"""Workers through the public API, beside multiprocessing.Pool and the raw floor, in one run.

    .venv/bin/python benchmarks/workers.py [--quick]
    .venv/bin/python benchmarks/workers.py --burst 7 [--workers 100]   # the burst alone

Prints a table and the ratios against the issue's targets (issue 13's two call ratios, the
throughput with 256 in flight and the sequential latency against the floor over Unix sockets,
come from alternating rounds of ours and the floor in this run); writes
benchmarks/results/workers.json. The floor is the raw asyncio/uvloop + msgspec ping-pong of
benchmarks/rpc_floor.py, started as a separate process like a worker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rpc_floor

import rpc_parallel as rp
from rpc_parallel.rpc import uvloop_available

SIXTEEN_MIB = 16 * 1024 * 1024


class Echo(rp.Worker[None]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x + 1

    @rp.rpc
    async def echo(self, data: bytes) -> bytes:
        return data


def pool_add(x: int) -> int:
    return x + 1


def pool_echo(data: bytes) -> bytes:
    return data


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# ------------------------------------------------------------------ rpc_parallel


async def ours_spawn_to_first_result(rounds: int, prestarted: bool) -> list[float]:
    """Spawn, first result, close; median in ms.

    ``prestarted``: a fork of the fork server (start_app starts one template per
    interpreter, import path and main script with the first spawn; the first spawn, which
    starts it, is not counted). Otherwise every spawn starts an interpreter
    (RPC_PARALLEL_PRESTART=0).
    """
    os.environ["RPC_PARALLEL_PRESTART"] = "1" if prestarted else "0"
    times = []
    try:
        for _ in range(rounds + (1 if prestarted else 0)):
            if prestarted:
                await asyncio.sleep(0.1)  # an application's pause between spawns
            started = time.perf_counter()
            async with await Echo.spawn(None) as worker:
                await worker.run(Echo.add, 1)
                times.append(time.perf_counter() - started)
    finally:
        os.environ.pop("RPC_PARALLEL_PRESTART", None)
    if prestarted:
        times = times[1:]  # The first spawn starts the fork server's template.
    return [t * 1000 for t in times]


async def ours_burst(count: int) -> float:
    """``count`` workers spawned at once with ``asyncio.gather``, one call each, all closed;
    seconds (forks of the fork server, whose template is already running)."""
    started = time.perf_counter()
    workers = await asyncio.gather(*(Echo.spawn(None) for _ in range(count)))
    await asyncio.gather(*(worker.run(Echo.add, i) for i, worker in enumerate(workers)))
    await asyncio.gather(*(worker.close() for worker in workers))
    return time.perf_counter() - started


async def ours_latency(worker: rp.WorkerHandle[Echo], calls: int) -> tuple[float, float]:
    for i in range(200):
        await worker.run(Echo.add, i)
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        await worker.run(Echo.add, i)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6, percentile(samples, 0.99) * 1e6


async def ours_throughput(
    workers: list[rp.WorkerHandle[Echo]], seconds: float, use_submit: bool
) -> float:
    in_flight = 256
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        if use_submit:
            calls: list[Awaitable[int]] = [
                workers[i % len(workers)].submit(Echo.add, i) for i in range(in_flight)
            ]
        else:
            calls = [workers[i % len(workers)].run(Echo.add, i) for i in range(in_flight)]
        await asyncio.gather(*calls)
        done += in_flight
    return done / (time.perf_counter() - started)


async def ours_bandwidth(worker: rp.WorkerHandle[Echo], seconds: float) -> float:
    data = os.urandom(SIXTEEN_MIB)
    await worker.run(Echo.echo, data)
    moved = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or moved < 4 * SIXTEEN_MIB * 2:
        result = await worker.run(Echo.echo, data)
        moved += len(data) + len(result)
    return moved / (time.perf_counter() - started) / 1e9


# ------------------------------------------------------------------ multiprocessing.Pool


def pool_spawn_to_first_result(rounds: int, method: str) -> float:
    context = multiprocessing.get_context(method)
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        with context.Pool(1) as pool:
            pool.apply(pool_add, (1,))
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def pool_burst(count: int) -> float:
    """``multiprocessing.get_context("fork").Pool(count)`` started, one task per process
    (``chunksize=1``), closed and joined; seconds."""
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(count) as pool:
        pool.map(pool_add, range(count), chunksize=1)
        pool.close()
        pool.join()
    return time.perf_counter() - started


_TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu() -> float:
    """CPU seconds used so far by this process, its reaped children and its live children
    with what they reaped (the fork server's template reaps our forked workers; a Pool's
    workers are reaped by us). Counts the whole burst, whoever's process does the work."""
    own = time.process_time()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own + reaped.ru_utime + reaped.ru_stime
    for pid in _live_children():
        try:
            with open(f"/proc/{pid}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15]) / _TICK  # utime stime cutime cstime
    return total


def _live_children() -> list[int]:
    """This process's children that have not been reaped (the fork server's template)."""
    pids: list[int] = []
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        with contextlib.suppress(OSError), \
                open(f"/proc/{os.getpid()}/task/{task}/children") as file:
            pids.extend(int(pid) for pid in file.read().split())
    return pids


async def burst_figures(count: int, rounds: int) -> dict[str, Any]:
    """Our burst and the Pool's, interleaved round by round (which goes first alternates);
    medians of wall time and of the CPU time of the whole process tree, in ms."""
    os.environ["RPC_PARALLEL_PRESTART"] = "1"
    ours: list[tuple[float, float]] = []
    pool: list[tuple[float, float]] = []

    async def one_of_ours() -> None:
        cpu = tree_cpu()
        wall = await ours_burst(count)
        ours.append((wall, tree_cpu() - cpu))

    def one_pool() -> None:
        cpu = tree_cpu()
        wall = pool_burst(count)
        pool.append((wall, tree_cpu() - cpu))

    try:
        await ours_burst(2)  # the template is running, as after an application's first spawn
        for round_number in range(rounds):
            if round_number % 2:
                one_pool()
                await one_of_ours()
            else:
                await one_of_ours()
                one_pool()
    finally:
        os.environ.pop("RPC_PARALLEL_PRESTART", None)

    def median_ms(samples: list[tuple[float, float]], which: int) -> float:
        return statistics.median(sample[which] for sample in samples) * 1000

    return {"ours_ms": median_ms(ours, 0), "pool_ms": median_ms(pool, 0),
            "ours_cpu_ms": median_ms(ours, 1), "pool_cpu_ms": median_ms(pool, 1),
            "ours_all_ms": [round(wall * 1000, 1) for wall, _ in ours],
            "pool_all_ms": [round(wall * 1000, 1) for wall, _ in pool],
            "ours_all_cpu_ms": [round(cpu * 1000, 1) for _, cpu in ours],
            "pool_all_cpu_ms": [round(cpu * 1000, 1) for _, cpu in pool]}


def print_burst(burst: dict[str, Any]) -> None:
    """Every round's wall and CPU time, then the medians and both ratios."""
    print(f"\nburst of {burst['workers']} workers, one call each (ms, interleaved rounds)")
    print(f"  rpc_parallel (forked)  wall {burst['ours_all_ms']}")
    print(f"                         cpu  {burst['ours_all_cpu_ms']}")
    print(f"  Pool(fork)             wall {burst['pool_all_ms']}")
    print(f"                         cpu  {burst['pool_all_cpu_ms']}")
    print(f"  medians: ours {burst['ours_ms']:.0f} ms ({burst['ours_cpu_ms']:.0f} ms CPU), "
          f"Pool {burst['pool_ms']:.0f} ms ({burst['pool_cpu_ms']:.0f} ms CPU); "
          f"ratio {burst['ours_ms'] / burst['pool_ms']:.2f} wall (target <= 2), "
          f"{burst['ours_cpu_ms'] / burst['pool_cpu_ms']:.2f} CPU")


def pool_latency(pool: Any, calls: int) -> tuple[float, float]:
    for i in range(200):
        pool.apply(pool_add, (i,))
    samples = []
    for i in range(calls):
        started = time.perf_counter()
        pool.apply(pool_add, (i,))
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6, percentile(samples, 0.99) * 1e6


def pool_throughput(pool: Any, seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        results = [pool.apply_async(pool_add, (i,)) for i in range(256)]
        for result in results:
            result.get()
        done += 256
    return done / (time.perf_counter() - started)


def pool_bandwidth(pool: Any, seconds: float) -> float:
    data = os.urandom(SIXTEEN_MIB)
    pool.apply(pool_echo, (data,))
    moved = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or moved < 4 * SIXTEEN_MIB * 2:
        result = pool.apply(pool_echo, (data,))
        moved += len(data) + len(result)
    return moved / (time.perf_counter() - started) / 1e9


# ------------------------------------------------------------------ the floor


async def floor_figures(plan: rpc_floor.Plan) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as directory:
        server = rpc_floor.ServerProcess.start("floor", "unix", directory)
        try:
            client = await rpc_floor.connect(server)
            median, p99 = await rpc_floor.measure_latency(client, plan.latency_calls)
            throughput = await rpc_floor.measure_throughput(client, plan.throughput_seconds)
            bandwidth = await rpc_floor.measure_bandwidth(
                client, plan.bandwidth_seconds, plan.min_echoes
            )
            client.close()
        finally:
            server.stop()
    return {"latency_median_us": median, "latency_p99_us": p99,
            "throughput_calls_per_s": throughput, "bandwidth_gb_per_s": bandwidth}


async def versus_floor(
    worker: rp.WorkerHandle[Echo], plan: rpc_floor.Plan, rounds: int
) -> dict[str, float]:
    """Issue 13's two call figures, through the public API and for the floor, measured the
    same way (rpc_floor's: sequential round trips; 256 calls kept in flight with a new one
    started as each finishes, ``submit`` for ours), in alternating rounds, over Unix sockets."""
    samples = {"ours": rpc_floor.Samples(), "floor": rpc_floor.Samples()}
    with tempfile.TemporaryDirectory() as directory:
        server = rpc_floor.ServerProcess.start("floor", "unix", directory)
        try:
            floor = await rpc_floor.connect(server)
            ours = rpc_floor.Client(
                functools.partial(worker.run, Echo.add),
                functools.partial(worker.submit, Echo.add),
                lambda: None,
            )
            for round_number in range(rounds):
                order = [("ours", ours), ("floor", floor)]
                if round_number % 2:
                    order.reverse()
                for name, client in order:
                    median, _ = await rpc_floor.measure_latency(client, plan.latency_calls)
                    samples[name].add("latency_us", median)
                    samples[name].add("throughput", await rpc_floor.measure_throughput(
                        client, plan.throughput_seconds))
            floor.close()
        finally:
            server.stop()
    figures = {f"{name}_{key}": value for name, s in samples.items()
               for key in ("latency_us", "throughput") if (value := s.median(key)) is not None}
    figures["latency_ratio"] = figures["ours_latency_us"] / figures["floor_latency_us"]
    figures["throughput_ratio"] = figures["ours_throughput"] / figures["floor_throughput"]
    return figures


# ------------------------------------------------------------------ the run


async def run(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 5
    calls = 500 if quick else 5000
    seconds = 0.2 if quick else 1.0
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "uvloop": uvloop_available()}}
    burst_count = 20 if quick else 100
    burst = await burst_figures(burst_count, 1 if quick else 3)
    results["burst"] = {"workers": burst_count, **burst}
    ours: dict[str, float] = {}
    forked = await ours_spawn_to_first_result(3 if quick else 15, prestarted=True)
    ours["spawn_to_first_result_ms"] = statistics.median(forked)
    ours["spawn_to_first_result_ms_best"] = min(forked)
    ours["spawn_to_first_result_ms_cold"] = statistics.median(
        await ours_spawn_to_first_result(rounds, False))
    async with await Echo.spawn(None) as first, await Echo.spawn(None) as second:
        ours["latency_median_us"], ours["latency_p99_us"] = await ours_latency(first, calls)
        ours["throughput_run_calls_per_s"] = await ours_throughput([first, second], seconds, False)
        ours["throughput_submit_calls_per_s"] = await ours_throughput(
            [first, second], seconds, True
        )
        ours["bandwidth_gb_per_s"] = await ours_bandwidth(first, seconds)
        versus = await versus_floor(first, rpc_floor.QUICK if quick else rpc_floor.FULL,
                                    rounds=2 if quick else 5)
    results["rpc_parallel"] = ours
    results["versus_floor"] = versus

    pool: dict[str, float] = {}
    pool["spawn_to_first_result_ms_fork"] = pool_spawn_to_first_result(rounds, "fork")
    pool["spawn_to_first_result_ms_spawn"] = pool_spawn_to_first_result(rounds, "spawn")
    with multiprocessing.get_context("fork").Pool(2) as workers:
        pool["latency_median_us"], pool["latency_p99_us"] = pool_latency(workers, calls)
        pool["throughput_apply_async_calls_per_s"] = pool_throughput(workers, seconds)
        pool["bandwidth_gb_per_s"] = pool_bandwidth(workers, seconds)
    results["multiprocessing_pool"] = pool

    results["floor"] = await floor_figures(rpc_floor.QUICK if quick else rpc_floor.FULL)
    # Imported here: a worker imports this script as its class's module (and a ``spawn``
    # Pool's child as its main), and ``arrays`` imports numpy, which neither side's spawn
    # needs (about 95 ms of CPU each, measured here).
    import arrays

    results["arrays"] = await arrays.run(quick, 256)  # beside Pool (and Ray where it imports)

    best_throughput = max(ours["throughput_run_calls_per_s"], ours["throughput_submit_calls_per_s"])
    results["ratios"] = {
        "latency_vs_pool_apply (target <= 0.8)":
            ours["latency_median_us"] / pool["latency_median_us"],
        "throughput_vs_pool_apply_async (target >= 5)":
            best_throughput / pool["throughput_apply_async_calls_per_s"],
        "bandwidth_vs_pool (target >= 2)": ours["bandwidth_gb_per_s"] / pool["bandwidth_gb_per_s"],
        f"burst_{burst_count}_vs_fork_pool (target <= 2)": burst["ours_ms"] / burst["pool_ms"],
        "spawn_to_first_result_ms, forked (target <= 15)": ours["spawn_to_first_result_ms"],
        "spawn_to_first_result_ms, forked, best round": ours["spawn_to_first_result_ms_best"],
        "spawn_to_first_result_ms, cold (target <= 80)": ours["spawn_to_first_result_ms_cold"],
        "latency_vs_floor": ours["latency_median_us"] / results["floor"]["latency_median_us"],
        "throughput_vs_floor": best_throughput / results["floor"]["throughput_calls_per_s"],
        "bandwidth_vs_floor": ours["bandwidth_gb_per_s"] / results["floor"]["bandwidth_gb_per_s"],
        "issue 13: throughput, 256 in flight, vs floor (target >= 0.8)":
            versus["throughput_ratio"],
        "issue 13: sequential latency vs floor (target <= 1.2)": versus["latency_ratio"],
    }
    return results


async def burst_only(count: int, rounds: int) -> None:
    """``--burst``: the burst section alone, to judge a change to spawning quickly."""
    print_burst({"workers": count, **await burst_figures(count, rounds)})


def print_results(results: dict[str, Any]) -> None:
    print_burst(results["burst"])
    for section in ("rpc_parallel", "multiprocessing_pool", "floor", "versus_floor"):
        print(f"\n{section}")
        for key, value in results[section].items():
            print(f"  {key:40s} {value:12.2f}")
    print("\nratios (same run)")
    for key, value in results["ratios"].items():
        print(f"  {key:50s} {value:8.2f}")
    import arrays  # (imported by ``run``; see there)

    arrays.print_results(results["arrays"])


def main(argv: list[str] | None = None, *, output: Path | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run")
    parser.add_argument("--burst", type=int, metavar="ROUNDS",
                        help="only the burst, this many interleaved rounds (no results file)")
    parser.add_argument("--workers", type=int, default=100, help="workers in --burst's burst")
    arguments = parser.parse_args(argv)
    holder: dict[str, Any] = {}
    if arguments.burst is not None:
        rp.start_app(lambda: burst_only(arguments.workers, arguments.burst))
        return {}

    async def body() -> None:
        holder.update(await run(arguments.quick))

    rp.start_app(body)
    print_results(holder)
    target = output or Path(__file__).resolve().parent / "results" / "workers.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(holder, indent=2) + "\n")
    return holder



if __name__ == "__main__":
    main()
