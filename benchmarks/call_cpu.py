"""CPU time per call on both ends, with 256 calls in flight, beside the floor, in one run.

    .venv/bin/python benchmarks/call_cpu.py [--quick] [--rounds N] [--seconds S]

Over Unix sockets, in alternating rounds, three contenders keep 256 calls of ``x + 1`` in
flight (a new call started as each finishes: ``rpc_floor.keep_in_flight``):

* ``floor``: the raw asyncio + msgspec protocol of ``benchmarks/rpc_floor.py``;
* ``rpc``: ``rpc.Connection.call_future`` to a server of ``rpc_floor.py --serve ours``;
* ``worker``: ``WorkerHandle.submit`` to a spawned worker (the public API).

For each it prints calls per second and the CPU time per call of the calling process and of
the serving process (from ``/proc/<pid>/task/*/schedstat``: every thread, in nanoseconds),
medians over the rounds. With the two ends taking turns (256 calls out, 256 answers back),
throughput follows the sum of the two CPU times, so ``floor CPU / our CPU`` is the
throughput ratio a quiet machine would show, and load moves it far less than calls per
second. Writes benchmarks/results/call_cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rpc_floor

import rpc_parallel as rp

IN_FLIGHT = rpc_floor.IN_FLIGHT


class Adder(rp.Worker[None]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x + 1


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in nanoseconds."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as stat:
            total += int(stat.read().split()[0])
    return total


async def measure(
    start: Callable[[int], asyncio.Future[Any]], server_pid: int, seconds: float
) -> dict[str, float]:
    """Calls per second and CPU microseconds per call on each end, IN_FLIGHT in flight."""
    await rpc_floor.keep_in_flight(start, min(0.1, seconds))  # warm-up
    client, server = time.process_time_ns(), cpu_ns(server_pid)
    calls, elapsed = await rpc_floor.keep_in_flight(start, seconds)
    return {
        "calls_per_s": calls / elapsed,
        "client_us": (time.process_time_ns() - client) / calls / 1e3,
        "server_us": (cpu_ns(server_pid) - server) / calls / 1e3,
    }


async def rounds(count: int, seconds: float) -> dict[str, list[dict[str, float]]]:
    samples: dict[str, list[dict[str, float]]] = {"floor": [], "rpc": [], "worker": []}
    with tempfile.TemporaryDirectory(prefix="call_cpu.") as directory:
        servers = {kind: rpc_floor.ServerProcess.start(kind, "unix", directory)
                   for kind in ("floor", "ours")}
        try:
            floor = await rpc_floor.connect(servers["floor"])
            ours = await rpc_floor.connect(servers["ours"])
            async with await Adder.spawn(None) as worker:
                await worker.run(Adder.add, 0)
                assert floor.start is not None and ours.start is not None
                contenders: list[tuple[str, Callable[[int], asyncio.Future[Any]], int]] = [
                    ("floor", floor.start, servers["floor"].process.pid),
                    ("rpc", ours.start, servers["ours"].process.pid),
                    ("worker", functools.partial(worker.submit, Adder.add), worker.pid),
                ]
                for number in range(count):
                    order = contenders if number % 2 == 0 else contenders[::-1]
                    for name, start, pid in order:
                        samples[name].append(await measure(start, pid, seconds))
            floor.close()
            ours.close()
        finally:
            for server in servers.values():
                server.stop()
    return samples


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    medians = {
        name: {key: statistics.median(s[key] for s in runs) for key in runs[0]}
        for name, runs in samples.items()
    }
    floor = medians["floor"]
    floor_cpu = floor["client_us"] + floor["server_us"]
    ratios = {}
    for name in ("rpc", "worker"):
        ours = medians[name]
        ratios[name] = {
            "cpu_floor_over_ours": floor_cpu / (ours["client_us"] + ours["server_us"]),
            "throughput_ours_over_floor": statistics.median(
                o["calls_per_s"] / f["calls_per_s"]
                for o, f in zip(samples[name], samples["floor"], strict=True)
            ),
        }
    return {"medians": medians, "ratios": ratios, "rounds": samples}


def print_summary(summary: dict[str, Any]) -> None:
    print(f"{'':10}{'calls/s':>12}{'client us':>12}{'server us':>12}{'sum us':>10}")
    for name, m in summary["medians"].items():
        print(f"{name:10}{m['calls_per_s']:>12,.0f}{m['client_us']:>12.3f}"
              f"{m['server_us']:>12.3f}{m['client_us'] + m['server_us']:>10.3f}")
    print(f"\n{IN_FLIGHT} in flight, Unix sockets; ratios against the floor (target 0.8):")
    for name, r in summary["ratios"].items():
        print(f"  {name:8} CPU per call, floor/ours {r['cpu_floor_over_ours']:.2f}   "
              f"calls/s, ours/floor (paired rounds) {r['throughput_ours_over_floor']:.2f}")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one short round (rough numbers)")
    parser.add_argument("--rounds", type=int, help="rounds (default 5, 1 with --quick)")
    parser.add_argument("--seconds", type=float, help="seconds a measurement (default 1)")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "call_cpu.json")
    arguments = parser.parse_args(argv)
    count = arguments.rounds or (1 if arguments.quick else 5)
    seconds = arguments.seconds or (0.2 if arguments.quick else 1.0)
    holder: dict[str, Any] = {}

    async def body() -> None:
        holder.update(summarize(await rounds(count, seconds)))

    rp.start_app(body)
    print_summary(holder)
    target: Path = arguments.json
    target.parent.mkdir(parents=True, exist_ok=True)
    report = {"benchmark": "call_cpu", "quick": arguments.quick, "rounds_run": count,
              "seconds": seconds, "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "cpus": os.cpu_count(), **holder}
    target.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {target}")
    return report


if __name__ == "__main__":
    main()
