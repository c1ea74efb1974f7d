"""Warm processes under ``start_app``: default spawns are forks of the fork server.

Each test runs a real master script (``start_app``) in a subprocess and checks what it
prints and what is left in /proc afterwards.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from .support import alive, gone, pids_with_argument
from .test_process_model import run_script

SCRIPT = '''
import asyncio
import os
import sys

import rpc_parallel as rp


class Counter(rp.Worker[int]):
    async def init_worker_state(self, start: int) -> None:
        if start < 0:
            raise ValueError("negative start")
        self.start = start

    @rp.rpc
    async def facts(self) -> tuple[int, int, str, int]:
        command = open("/proc/self/cmdline").read().replace("\\0", " ")
        return self.start, os.getpid(), command, os.getppid()


async def main() -> None:
    names = set()
    for start in range(4):
        async with await Counter.spawn(start) as worker:
            value, pid, command, parent = await worker.run(Counter.facts)
            assert value == start, (value, start)
            warm = os.environ.get("RPC_PARALLEL_PRESTART") != "0"
            expected = "fork-server" if warm else f"worker {worker.name}"
            assert f"rpc_parallel {expected} child-of " in command, command
            assert (parent != os.getpid()) == warm
            names.add(worker.name)
            print("worker", pid, worker.name, parent, flush=True)
    assert len(names) == 4
    try:
        await Counter.spawn(-1)
    except rp.SpawnError as error:
        print("spawn error:", "negative start" in str(error), flush=True)
    # Options a pre-started process cannot honour start a process of their own.
    async with await Counter.spawn(9, env={"MARK": "1"}, name="named") as worker:
        value, pid, command, parent = await worker.run(Counter.facts)
        print("cold", value, "named child-of" in command, parent == os.getpid(), flush=True)
    # The fork server waits for the next spawn; it must be gone when the master ends.
    async with await Counter.spawn(5) as worker:
        await worker.run(Counter.facts)
    for _ in range(200):
        if [p for p in os.listdir("/proc") if p.isdigit() and _is_idle_worker(int(p))]:
            break
        await asyncio.sleep(0.05)
    print("idle", *sorted(p for p in os.listdir("/proc") if p.isdigit() and _is_idle_worker(int(p))),
          flush=True)


def _is_idle_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            command = file.read()
        with open(f"/proc/{pid}/stat") as file:
            parent = int(file.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return False
    return b"rpc_parallel\\0fork-server\\0" in command and parent == os.getpid()


if __name__ == "__main__":
    rp.start_app(main)
'''


async def test_spawns_are_forks_of_one_template_that_leaves_nothing(tmp_path: Path) -> None:
    script = tmp_path / "prestart_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    code, out, err = await run_script(script)
    assert code == 0, err
    lines = out.splitlines()
    workers = [line.split() for line in lines if line.startswith("worker ")]
    assert len(workers) == 4
    assert len({fields[3] for fields in workers}) == 1, "one template forked them all"
    assert "spawn error: True" in lines
    assert "cold 9 True True" in lines
    idle_line = next(line for line in lines if line.startswith("idle"))
    idle = [int(pid) for pid in idle_line.split()[1:]]
    assert idle == [int(workers[0][3])], "the fork server waits for the next spawn"
    for pid in idle + [int(fields[1]) for fields in workers]:
        await gone(pid, timeout=10.0)
        assert not alive(pid)
    assert not [pid for pid in pids_with_argument(str(script)) if alive(pid)]


async def test_prestart_can_be_turned_off(tmp_path: Path) -> None:
    script = tmp_path / "prestart_off.py"
    script.write_text(textwrap.dedent(SCRIPT))
    code, out, err = await run_script(script, env={"RPC_PARALLEL_PRESTART": "0"})
    assert code == 0, err
    idle_line = next(line for line in out.splitlines() if line.startswith("idle"))
    assert idle_line.split()[1:] == []
