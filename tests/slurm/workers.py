"""Worker classes for the Slurm tests: one function of every kind, and where it runs."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator

import msgspec

import rpc_parallel as rp


class Placement(msgspec.Struct, frozen=True):
    """Where a worker runs, as Slurm told its process."""

    job_id: str
    step_id: str
    host: str
    pid: int
    cpus: str


class Node(rp.Worker[int]):
    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset
        self.notes: list[str] = []

    @rp.rpc
    async def where(self) -> Placement:
        env = os.environ
        return Placement(job_id=env.get("SLURM_JOB_ID", ""), step_id=env.get("SLURM_STEP_ID", ""),
                         host=socket.gethostname(), pid=os.getpid(),
                         cpus=env.get("SLURM_CPUS_PER_TASK", ""))

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + self.offset

    @rp.pipe
    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i + self.offset

    @rp.state
    async def watch(self, extra: int) -> tuple[int, AsyncIterator[int]]:
        async def updates() -> AsyncIterator[int]:
            for i in range(2):
                yield extra + i

        return self.offset, updates()

    @rp.one_way
    async def note(self, text: str) -> None:
        self.notes.append(text)

    @rp.rpc
    async def all_notes(self) -> list[str]:
        return self.notes

    @rp.reverse_pipe
    async def total(self, numbers: AsyncIterator[int]) -> int:
        return sum([n async for n in numbers]) + self.offset

    @rp.rpc
    async def shout(self, text: str) -> None:
        """One line to stdout, one to stderr."""
        print(f"out: {text}", flush=True)
        print(f"err: {text}", file=sys.stderr, flush=True)

    @rp.rpc
    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def numbers(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


async def every_kind(handle: rp.WorkerHandle[Node]) -> dict[str, object]:
    """One call of each kind; what each returned."""
    reader = await handle.run(Node.count, 3)
    snapshot, updates = await handle.run(Node.watch, 5)
    await handle.run(Node.note, "a")
    await handle.run(Node.note, "b")
    notes: list[str] = []
    for _ in range(100):  # one-way calls are not awaited: poll their effect, bounded
        notes = await handle.run(Node.all_notes)
        if len(notes) == 2:
            break
        await asyncio.sleep(0.05)
    return {
        "rpc": await handle.run(Node.add, 1),
        "pipe": [x async for x in reader],
        "state": [snapshot, [u async for u in updates]],
        "one_way": notes,
        "reverse_pipe": await handle.run(Node.total, numbers(4)),
    }


def expected(offset: int) -> dict[str, object]:
    return {
        "rpc": 1 + offset, "pipe": [offset, offset + 1, offset + 2],
        "state": [offset, [5, 6]], "one_way": ["a", "b"], "reverse_pipe": 6 + offset,
    }


class Environment(msgspec.Struct, frozen=True):
    cwd: str
    value: str | None


class Fragile(rp.Worker[None]):
    """Fails as its process starts when ``RP_TEST_FAIL`` is set in its environment."""

    async def init_worker_state(self, _: None) -> None:
        if os.environ.get("RP_TEST_FAIL") == "import":
            raise SystemExit("boom before registering")

    @rp.rpc
    async def environment(self, name: str) -> Environment:
        return Environment(cwd=os.getcwd(), value=os.environ.get(name))
