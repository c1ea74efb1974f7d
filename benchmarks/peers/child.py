"""Runs every workload for one library, in its own process, and writes its results as JSON.

Started by the runner as ``python -m benchmarks.peers.child --peer KEY --setting NAME --out
FILE``. The file is rewritten after each workload, so a crash or a kill keeps what was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol

from .adapters import BY_KEY
from .adapters.base import AsyncPeer, Peer, Unsupported
from .adapters.tasks import CPU_SECONDS
from .settings import SETTINGS, Setting
from .stats import summarize

HARD_LIMIT_EXIT = 3
STEADY_KEYS = ("latency", "inflight", "bandwidth", "map", "map_cpu", "arrays")


class Ops(Protocol):
    """The blocking view of an adapter that the workloads drive."""

    def start_cluster(self, workers: int) -> float: ...
    def stop_cluster(self) -> None: ...
    def spawn_first(self) -> float: ...
    def setup(self, workers: int) -> None: ...
    def latency(self, n: int) -> list[float]: ...
    def inflight(self, n: int) -> float: ...
    def echo(self, payload: bytes) -> float: ...
    def map(self, items: list[int]) -> float: ...
    def map_cpu(self, items: list[int]) -> float: ...
    def array_echo(self, array: Any) -> float: ...
    def teardown(self) -> None: ...


class _Bridge:
    """Blocking calls into an :class:`AsyncPeer` whose loop runs in another thread."""

    def __init__(self, peer: AsyncPeer, loop: asyncio.AbstractEventLoop) -> None:
        self.peer = peer
        self.loop = loop

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def start_cluster(self, workers: int) -> float:
        return float(self._run(self.peer.start_cluster(workers)))

    def stop_cluster(self) -> None:
        self._run(self.peer.stop_cluster())

    def spawn_first(self) -> float:
        return float(self._run(self.peer.spawn_first()))

    def setup(self, workers: int) -> None:
        self._run(self.peer.setup(workers))

    def latency(self, n: int) -> list[float]:
        return list(self._run(self.peer.latency(n)))

    def inflight(self, n: int) -> float:
        return float(self._run(self.peer.inflight(n)))

    def echo(self, payload: bytes) -> float:
        return float(self._run(self.peer.echo(payload)))

    def map(self, items: list[int]) -> float:
        return float(self._run(self.peer.map(items)))

    def map_cpu(self, items: list[int]) -> float:
        return float(self._run(self.peer.map_cpu(items)))

    def array_echo(self, array: Any) -> float:
        return float(self._run(self.peer.array_echo(array)))

    def teardown(self) -> None:
        self._run(self.peer.teardown())


class Recorder:
    """The library's result document, written atomically after every change."""

    def __init__(self, path: str, doc: dict[str, Any]) -> None:
        self.path = path
        self.doc = doc
        self.lock = threading.Lock()
        self.write()

    def write(self) -> None:
        with self.lock:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.doc, f, indent=1)
            os.replace(tmp, self.path)

    def metric(self, key: str, value: dict[str, Any]) -> None:
        with self.lock:
            self.doc["metrics"][key] = value
        self.write()


class Watchdog:
    """Abandons the process when one phase runs past the hard limit (no phase may hang)."""

    def __init__(self, limit_s: float, rec: Recorder) -> None:
        self.limit_s = limit_s
        self.rec = rec
        self.cond = threading.Condition()
        self.current: tuple[str, float] | None = None
        threading.Thread(target=self._watch, name="watchdog", daemon=True).start()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        with self.cond:
            self.current = (name, time.monotonic() + self.limit_s)
            self.cond.notify()
        try:
            yield
        finally:
            with self.cond:
                self.current = None
                self.cond.notify()

    def _watch(self) -> None:
        with self.cond:
            while True:
                if self.current is None:
                    self.cond.wait()
                    continue
                name, deadline = self.current
                left = deadline - time.monotonic()
                if left > 0:
                    self.cond.wait(left)
                    continue
                break
        msg = f"abandoned: {name} ran past the {self.limit_s:.0f} s limit"
        log(msg)
        with self.rec.lock:
            self.rec.doc["status"] = "timeout"
            self.rec.doc["note"] = msg
            self.rec.doc["metrics"].setdefault(name, {"status": "error", "error": msg})
        self.rec.write()
        os._exit(HARD_LIMIT_EXIT)


def log(msg: str) -> None:
    print(f"[child {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".strip()


def cpu_ratios(ops: Ops, setting: Setting, budget: float) -> list[float]:
    """Wall time / ideal of mapping ``setting.cpu_items`` items of ``CPU_SECONDS`` each over
    2 workers, after a short warm-up (the function's first load)."""
    items = list(range(setting.cpu_items))
    ops.map_cpu(items[:10])
    ideal = len(items) * CPU_SECONDS / 2
    deadline = time.monotonic() + budget
    ratios: list[float] = []
    while len(ratios) < setting.cpu_reps:
        ratios.append(ops.map_cpu(items) / ideal)
        if time.monotonic() > deadline:
            break
    return ratios


def _rss(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def array_rounds(ops: Ops, setting: Setting, budget: float) -> tuple[list[float], float]:
    """The array echo: GB/s of each round, and the highest peak RSS of a round over the RSS
    before the array existed, as a multiple of the array size (VmHWM, reset per round)."""
    try:
        import numpy as np
    except ImportError as exc:
        raise Unsupported("numpy is not installed") from exc
    import gc

    size = setting.array_bytes
    gc.collect()
    base = _rss("VmRSS")
    array = np.random.default_rng(0).random(size // 8)
    ops.array_echo(array)  # warm-up
    deadline = time.monotonic() + budget
    rates: list[float] = []
    peak = 0
    while len(rates) < setting.array_reps:
        gc.collect()
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # VmHWM := VmRSS
        rates.append(2 * size / ops.array_echo(array) / 1e9)
        peak = max(peak, _rss("VmHWM") - base)
        if time.monotonic() > deadline:
            break
    return rates, peak / size


def run_workloads(ops: Ops, peer: Peer | AsyncPeer, setting: Setting, rec: Recorder) -> None:
    dog = Watchdog(setting.workload_limit_s, rec)
    budget = setting.workload_budget_s
    supports = peer.supports
    notes = peer.notes

    def na(key: str) -> None:
        rec.metric(key, {"status": "n/a", "note": notes.get(key)})

    def fail(key: str, exc: Exception) -> None:
        log(f"{key} failed:\n{traceback.format_exc()}")
        if isinstance(exc, Unsupported):
            na(key)
        else:
            rec.metric(key, {"status": "error", "error": _err(exc), "note": notes.get(key)})

    def ok(key: str, samples: list[float], **extra: Any) -> None:
        rec.metric(
            key, {"status": "ok", "summary": summarize(samples), "note": notes.get(key), **extra}
        )

    # --- spawn to first result (and cluster start, measured on its own) ---
    cluster_samples: list[float] = []
    if "spawn" in supports:
        with dog.phase("spawn"):
            try:
                samples: list[float] = []
                deadline = time.monotonic() + budget
                if peer.has_cluster:
                    for _ in range(setting.cluster_reps):
                        cluster_samples.append(ops.start_cluster(2))
                        try:
                            samples.append(ops.spawn_first())
                        finally:
                            ops.stop_cluster()
                        if time.monotonic() > deadline:
                            break
                else:
                    if setting.spawn_reps > 1:
                        ops.spawn_first()  # warm-up: imports, page cache
                    while len(samples) < setting.spawn_reps:
                        samples.append(ops.spawn_first())
                        if time.monotonic() > deadline:
                            break
                ok("spawn", [s * 1e3 for s in samples])
            except Exception as exc:
                fail("spawn", exc)
    else:
        na("spawn")

    # --- steady state: 2 workers kept up for the remaining workloads ---
    steady = [k for k in STEADY_KEYS if k in supports]
    setup_error: str | None = None
    cluster_up = False
    with dog.phase("setup"):
        try:
            if peer.has_cluster:
                cluster_samples.append(ops.start_cluster(2))
                cluster_up = True
            if steady:
                ops.setup(2)
        except Exception as exc:
            log(f"setup failed:\n{traceback.format_exc()}")
            setup_error = f"setup failed: {_err(exc)}"
    if peer.has_cluster and cluster_samples:
        ok("cluster_start", cluster_samples)
    elif not peer.has_cluster:
        na("cluster_start")
    elif setup_error is not None:
        rec.metric("cluster_start", {"status": "error", "error": setup_error})

    def calibrated(run: Callable[[int], float], target: int, reps: int) -> tuple[int, float]:
        """Warm up, then pick the largest size up to ``target`` whose repetitions fit the
        budget. Two warm-up sizes separate a fixed per-run cost (a scheduler round, a graph
        of ~100 partitions) from the per-item cost, so a fixed cost is not mistaken for slow
        items; when the fixed cost alone exceeds a repetition's share of the budget, a
        repetition may take twice the fixed cost (fewer repetitions then fit)."""
        per_rep = budget / max(reps, 1)
        n1 = min(target, max(10, target // 100))
        t1 = run(n1)
        n2 = min(target, n1 * 5)
        per_item, fixed = t1 / n1, 0.0
        if n2 > n1 and t1 * n2 / n1 <= 1.5 * budget:
            t2 = run(n2)
            per_item = max(0.0, (t2 - t1) / (n2 - n1))
            fixed = max(0.0, t1 - per_item * n1)
        allowed = max(per_rep, 2 * fixed)
        fit = target if per_item <= 0 else int((allowed - fixed) / per_item)
        return max(min(10, target), min(target, fit)), time.monotonic() + budget

    for key in STEADY_KEYS:
        if key not in supports:
            na(key)
            continue
        if setup_error is not None:
            rec.metric(key, {"status": "error", "error": setup_error, "note": notes.get(key)})
            continue
        with dog.phase(key):
            try:
                if key == "latency":
                    target = setting.latency_calls
                    ops.latency(min(20, target))  # warm-up
                    deadline = time.monotonic() + budget
                    chunk = max(10, target // 10)
                    lat: list[float] = []
                    while len(lat) < target and (not lat or time.monotonic() < deadline):
                        lat += ops.latency(min(chunk, target - len(lat)))
                    ok(key, [s * 1e6 for s in lat], target=target)
                elif key == "inflight":
                    target = setting.inflight_calls
                    n, deadline = calibrated(ops.inflight, target, setting.inflight_reps)
                    rates: list[float] = []
                    while len(rates) < setting.inflight_reps:
                        rates.append(n / ops.inflight(n))
                        if time.monotonic() > deadline:
                            break
                    ok(key, rates, size=n, target=target)
                elif key == "bandwidth":
                    size = setting.echo_bytes
                    payload = os.urandom(size)
                    ops.echo(payload)  # warm-up
                    deadline = time.monotonic() + budget
                    bw: list[float] = []
                    while len(bw) < setting.echo_reps:
                        bw.append(2 * size / ops.echo(payload) / 1e9)
                        if time.monotonic() > deadline:
                            break
                    ok(key, bw, size=size)
                elif key == "map_cpu":
                    ok(key, cpu_ratios(ops, setting, budget), size=setting.cpu_items)
                elif key == "arrays":
                    rates, peak = array_rounds(ops, setting, budget)
                    ok(key, rates, size=setting.array_bytes, peak_rss_over_array=peak)
                else:
                    target = setting.map_items

                    def run_map(n: int) -> float:
                        return ops.map(list(range(n)))

                    n, deadline = calibrated(run_map, target, setting.map_reps)
                    items = list(range(n))
                    speeds: list[float] = []
                    while len(speeds) < setting.map_reps:
                        speeds.append(n / ops.map(items))
                        if time.monotonic() > deadline:
                            break
                    ok(key, speeds, size=n, target=target)
            except Exception as exc:
                fail(key, exc)

    with dog.phase("teardown"):
        try:
            if steady and setup_error is None:
                ops.teardown()
        except Exception:
            log(f"teardown failed:\n{traceback.format_exc()}")
        try:
            if cluster_up:
                ops.stop_cluster()
        except Exception:
            log(f"stop_cluster failed:\n{traceback.format_exc()}")
    with rec.lock:
        rec.doc["status"] = "ok"
    rec.write()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--peer", required=True, choices=sorted(BY_KEY))
    ap.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    entry = BY_KEY[args.peer]
    setting = SETTINGS[args.setting]
    rec = Recorder(
        args.out,
        {
            "key": entry.key,
            "label": entry.label,
            "status": "running",
            "note": None,
            "version": None,
            "metrics": {},
        },
    )
    try:
        module = importlib.import_module(f".adapters.{entry.module}", __package__)
        peer: Peer | AsyncPeer = module.PEER()
    except Exception as exc:
        log(f"not available:\n{traceback.format_exc()}")
        rec.doc.update(status="unavailable", note=f"not available ({_err(exc)})")
        rec.write()
        return 0
    try:
        rec.doc["version"] = peer.version()
    except Exception as exc:
        rec.doc["version"] = f"unknown ({_err(exc)})"
    rec.write()
    log(f"{entry.label} {rec.doc['version'] or ''}: running the {setting.name} setting")

    if isinstance(peer, AsyncPeer):
        async_peer = peer

        async def amain() -> None:
            bridge = _Bridge(async_peer, asyncio.get_running_loop())
            await asyncio.to_thread(run_workloads, bridge, async_peer, setting, rec)

        async_peer.run_loop(amain)
    else:
        run_workloads(peer, peer, setting, rec)

    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
