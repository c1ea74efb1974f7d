"""A large float64 array echoed by a local worker: rpc_parallel beside multiprocessing.Pool
(pickle) and Ray's object store, in one run, rounds interleaved.

    python benchmarks/arrays.py [--quick] [--mib N]

Ray is measured when it imports (run with the peers' interpreter, .bench-venv/bin/python, with
PYTHONPATH=src); otherwise its column says why not. Each round sends the same array and gets
it back; the rate is 2 x the array size / round-trip time (bytes moved both ways, 10^9 per
GB). The master's peak RSS (/proc/self/status VmHWM, reset through /proc/self/clear_refs) is
reported as a multiple of the array size, two ways: per library, what a round adds at its
peak to the RSS before the round, plus the array itself (what a library keeps mapped
between rounds is counted in its first round only); and for rpc_parallel, whose first echo
runs before any other library has touched the process, its peak over the RSS the process
had before the array existed (the figure for the target). Issue #13's targets: >= 3x
Pool's rate, >= 1x Ray's, peak RSS < 2.5x the array.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

import rpc_parallel as rp
from rpc_parallel._state import process
from rpc_parallel.rpc import _segments

MIB = 1 << 20


class ArrayEcho(rp.Worker[None]):
    @rp.rpc
    async def echo(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return a


def pool_echo(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return a


def rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")  # resets VmHWM to the current RSS


class Contender:
    """One library: ``echo(array)`` returns the array it got back."""

    name = ""
    available = True
    why_not = ""

    def start(self) -> None: ...

    def echo(self, array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        raise NotImplementedError

    def stop(self) -> None: ...


class Ours(Contender):
    name = "rpc_parallel"

    def __init__(self, loop: asyncio.AbstractEventLoop, *, mapped_writes: bool = False) -> None:
        self.loop = loop
        self.mapped_writes = mapped_writes
        if mapped_writes:
            self.name = "rpc_parallel mapped_writes"
        self.worker: rp.WorkerHandle[ArrayEcho] | None = None

    async def astart(self) -> None:
        # Both write paths in one run: the worker spawned now gets mapped_writes in its
        # settings, and the master's side of the new connection is switched by hand (the
        # master's server took the application's settings when it started).
        state = process()
        saved = state.rpc_settings()
        opened = set(_segments._open)
        state.settings = msgspec.structs.replace(saved, mapped_writes=self.mapped_writes)
        try:
            self.worker = await ArrayEcho.spawn(None)
            await self.worker.run(ArrayEcho.echo, np.zeros(1))
        finally:
            state.settings = saved
        for segments in set(_segments._open) - opened:
            segments.mapped_writes = self.mapped_writes

    async def aecho(self, array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        assert self.worker is not None
        return await self.worker.run(ArrayEcho.echo, array)

    async def astop(self) -> None:
        if self.worker is not None:
            await self.worker.close()


class Pool(Contender):
    name = "multiprocessing.Pool"

    def start(self) -> None:
        self.pool = multiprocessing.get_context("fork").Pool(1)

    def echo(self, array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return self.pool.apply(pool_echo, (array,))  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.pool.terminate()
        self.pool.join()


class Ray(Contender):
    name = "Ray (ray.put + actor)"

    def __init__(self) -> None:
        try:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            import ray
        except ImportError as error:
            self.available = False
            self.why_not = f"ray does not import here ({error}); run with .bench-venv/bin/python"
            return
        self.ray = ray
        self.temp_dir = ""

    def start(self) -> None:
        ray = self.ray
        self.temp_dir = tempfile.mkdtemp(prefix="bench-ray-")
        ray.init(_temp_dir=self.temp_dir, num_cpus=1, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, configure_logging=False)

        class Actor:
            def echo(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
                return a

        self.actor = ray.remote(Actor).remote()

    def echo(self, array: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        ray = self.ray
        return ray.get(self.actor.echo.remote(ray.put(array)))  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.ray.shutdown()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def touch(array: npt.NDArray[np.float64]) -> None:
    """Read one value in each 4 KiB page of ``array``, as a program using the result would:
    a mapping (ours, Ray's) counts in the RSS only for the pages read."""
    float(array.reshape(-1)[::512].sum())


def measure(echo: Callable[[], npt.NDArray[np.float64]]) -> tuple[float, int]:
    """One round: seconds, and what it added at its peak to the RSS before it (with every
    page of the result read)."""
    gc.collect()
    base_rss = rss_bytes()
    reset_peak()
    started = time.perf_counter()
    result = echo()
    elapsed = time.perf_counter() - started
    touch(result)
    peak = rss_bytes("VmHWM") - base_rss
    del result
    gc.collect()
    return elapsed, peak


async def measure_ours(ours: Ours, array: npt.NDArray[np.float64]) -> tuple[float, int]:
    """``measure`` for our asynchronous echo."""
    gc.collect()
    base_rss = rss_bytes()
    reset_peak()
    started = time.perf_counter()
    result = await ours.aecho(array)
    elapsed = time.perf_counter() - started
    touch(result)
    peak = rss_bytes("VmHWM") - base_rss
    del result
    gc.collect()
    return elapsed, peak


async def run(quick: bool, mib: int) -> dict[str, Any]:
    rounds = 2 if quick else 5
    size = (8 if quick else mib) * MIB
    loop = asyncio.get_running_loop()
    ours, mapped = Ours(loop), Ours(loop, mapped_writes=True)
    pool, ray = Pool(), Ray()
    contenders: list[Contender] = [ours, mapped, pool, ray]
    pool.start()
    if ray.available:
        ray.start()  # before our workers exist: ray.init blocks this loop for seconds
    await ours.astart()
    await mapped.astart()
    gc.collect()
    base_rss = rss_bytes()
    array = np.random.default_rng(1).random(size // 8)
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    peaks: dict[str, list[int]] = {c.name: [] for c in contenders}
    first_peaks: dict[str, float] = {}
    try:
        for contender in contenders:  # warm-up, and a check of the result
            if contender is ray and not ray.available:
                continue
            if isinstance(contender, Ours):
                # Peak over the RSS before the array existed (ours, first) or over the RSS
                # before this first echo plus the array (mapped, whose first echo is second).
                before = base_rss if contender is ours else rss_bytes() - size
                reset_peak()
                back = await contender.aecho(array)
                touch(back)
                first_peaks[contender.name] = (rss_bytes("VmHWM") - before) / size
            else:
                back = await asyncio.to_thread(contender.echo, array)
            if not np.array_equal(back, array):
                raise RuntimeError(f"{contender.name} returned a different array")
            del back
            # uvloop keeps the handle it ran last, and so the finished call's future and its
            # result, until it runs another: let it, so the next "before" has no result mapped.
            await asyncio.sleep(0)
        for index in range(rounds):
            order = contenders if index % 2 == 0 else contenders[::-1]
            for contender in order:
                if contender is ray and not ray.available:
                    continue
                if isinstance(contender, Ours):
                    elapsed, peak = await measure_ours(contender, array)
                else:  # in a thread: the loop goes on with our worker's heartbeats
                    elapsed, peak = await asyncio.to_thread(
                        measure, lambda c=contender: c.echo(array))
                times[contender.name].append(elapsed)
                peaks[contender.name].append(peak)
    finally:
        await ours.astop()
        await mapped.astop()
        pool.stop()
        if ray.available:
            ray.stop()
    figures: dict[str, Any] = {}
    for name, samples in times.items():
        if not samples:
            figures[name] = {"skipped": ray.why_not}
            continue
        median = statistics.median(samples)
        figures[name] = {
            "round_trip_s": median,
            "gb_per_s": 2 * size / median / 1e9,
            "peak_rss_over_array": max(peaks[name]) / size + 1,
        }
    ratios: dict[str, float | str] = {}
    for mine in (ours, mapped):
        rate = figures[mine.name]["gb_per_s"]
        label = "" if mine is ours else " (mapped_writes)"
        ratios[f"rate vs multiprocessing.Pool{label} (target >= 3)"] = (
            rate / figures[pool.name]["gb_per_s"])
        ratios[f"rate vs Ray object store{label} (target >= 1)"] = (
            rate / figures[ray.name]["gb_per_s"] if ray.available else "n/a: " + ray.why_not
        )
        ratios[f"master peak RSS / array size{label} (target < 2.5)"] = first_peaks[mine.name]
    return {"array_mib": size // MIB, "rounds": rounds, "figures": figures, "ratios": ratios,
            "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}


def print_results(results: dict[str, Any]) -> None:
    print(f"\n{results['array_mib']} MiB float64 array echoed, median of {results['rounds']} "
          "rounds (interleaved)")
    for name, figure in results["figures"].items():
        if "skipped" in figure:
            print(f"  {name:30s} skipped: {figure['skipped']}")
            continue
        print(f"  {name:30s} {figure['round_trip_s'] * 1000:9.1f} ms  {figure['gb_per_s']:6.2f} "
              f"GB/s  peak RSS {figure['peak_rss_over_array']:.2f}x the array")
    print("\nratios (same run)")
    for key, value in results["ratios"].items():
        shown = f"{value:8.2f}" if isinstance(value, float) else value
        print(f"  {key:64s} {shown}")


def main(argv: list[str] | None = None, *, output: Path | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="an 8 MiB array, 2 rounds")
    parser.add_argument("--mib", type=int, default=256, help="array size (default 256 MiB)")
    parser.add_argument("--out", type=Path, help="where to write the results (JSON)")
    arguments = parser.parse_args(argv)
    holder: dict[str, Any] = {}

    async def body() -> None:
        holder.update(await run(arguments.quick, arguments.mib))

    rp.start_app(body)
    print_results(holder)
    target = output or arguments.out or Path(__file__).resolve().parent / "results" / "arrays.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(holder, indent=2) + "\n")
    return holder


if __name__ == "__main__":
    main()
