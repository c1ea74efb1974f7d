#!/usr/bin/env python3
"""Measures the detection times docs/reliability.md reports (#8 item 10), with real signals.

- worker killed (SIGKILL) -> a call in flight fails with ``rp.WorkerDied`` after X s;
- worker stopped (SIGSTOP) -> after Y s (bounded by heartbeat_timeout + margin);
- master killed (SIGKILL) -> its workers are gone after Z s.

    python scripts/long/detection_times.py --repeat 5 --heartbeat-timeout 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "src"), str(REPO)]
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO),
                                            os.environ.get("PYTHONPATH", "")])

import rpc_parallel as rp  # noqa: E402
from tests.hardening.support import descendants  # noqa: E402
from tests.workers.support import alive  # noqa: E402
from tests.workers.workers import Echo  # noqa: E402

QUIET = {"redirect_stdout": rp.DevNull(), "redirect_stderr": rp.DevNull()}

MASTER = """
import asyncio, json, os, sys
import rpc_parallel as rp
from tests.workers.workers import Echo

async def main():
    workers = [await Echo.spawn(0, redirect_stdout=rp.DevNull()) for _ in range(2)]
    keep = [asyncio.ensure_future(w.run(Echo.sleep, 600.0)) for w in workers]
    await workers[0].run(Echo.add, 0, 0)
    print(json.dumps([w.pid for w in workers]), flush=True)
    await asyncio.gather(*keep)

rp.start_app(main, rpc_settings=rp.RpcSettings.from_json(sys.argv[1]))
"""


async def worker_fault(how: signal.Signals) -> float:
    w = await Echo.spawn(0, **QUIET)
    try:
        call = asyncio.ensure_future(w.run(Echo.sleep, 600.0))
        await w.run(Echo.add, 0, 0)
        os.kill(w.pid, how)
        started = time.monotonic()
        try:
            await asyncio.wait_for(call, 120.0)
        except rp.WorkerDied:
            return time.monotonic() - started
        raise AssertionError("the call did not fail with WorkerDied")
    finally:
        await w.close()


async def master_fault(settings: rp.RpcSettings, directory: Path) -> float:
    script = directory / "master.py"
    script.write_text(textwrap.dedent(MASTER))
    master = await asyncio.create_subprocess_exec(
        sys.executable, str(script), settings.to_json(), stdout=asyncio.subprocess.PIPE,
        cwd=str(REPO))
    assert master.stdout is not None
    json.loads(await asyncio.wait_for(master.stdout.readline(), 60.0))
    below = descendants(master.pid)
    master.kill()
    await master.wait()
    started = time.monotonic()
    while any(alive(pid) for pid in below):
        if time.monotonic() - started > 120:
            raise AssertionError("the master's workers outlived it by 120 s")
        await asyncio.sleep(0.01)
    took = time.monotonic() - started
    await master.communicate()
    return took


def summary(name: str, times: list[float]) -> str:
    return (f"{name:<40} median {statistics.median(times):6.2f} s   max {max(times):6.2f} s"
            f"   (n={len(times)})")


async def measure(args: argparse.Namespace, settings: rp.RpcSettings) -> None:
    import tempfile

    killed = [await worker_fault(signal.SIGKILL) for _ in range(args.repeat)]
    stopped = [await worker_fault(signal.SIGSTOP) for _ in range(args.repeat)]
    with tempfile.TemporaryDirectory() as directory:
        master = [await master_fault(settings, Path(directory)) for _ in range(args.repeat)]
    print(f"settings: heartbeat_interval {settings.heartbeat_interval} s, heartbeat_timeout "
          f"{settings.heartbeat_timeout} s")
    print(summary("worker SIGKILL -> WorkerDied", killed))
    print(summary("worker SIGSTOP -> WorkerDied", stopped))
    print(summary("master SIGKILL -> its workers gone", master))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--heartbeat-interval", type=float, default=1.0)
    parser.add_argument("--heartbeat-timeout", type=float, default=10.0)
    args = parser.parse_args()
    settings = rp.RpcSettings(heartbeat_interval=args.heartbeat_interval,
                              heartbeat_timeout=args.heartbeat_timeout)
    rp.expert.init_master(settings)
    rp.rpc.run(measure(args, settings))  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
