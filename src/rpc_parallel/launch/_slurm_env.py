"""The current Slurm allocation, read from the ``SLURM_*`` environment variables.

Slurm writes lists in compressed forms: host lists as ``node[01-03,07],gpu1`` and counts
per node as ``2(x3),1`` ("2 on each of three nodes, then 1"). ``expand_hostlist`` and
``expand_counts`` undo them; ``slurm_allocation()`` puts the pieces together for a caller
that sizes a pool or a map_reduce configuration from the allocation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

_COUNT = re.compile(r"^(\d+)(?:\(x(\d+)\))?$")


def _split_top_level(text: str) -> list[str]:
    """Split at the commas that are not inside brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in Slurm host list {text!r}")
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    if depth != 0:
        raise ValueError(f"unbalanced '[' in Slurm host list {text!r}")
    parts.append(text[start:])
    return [part for part in parts if part]


def _expand_range(item: str, whole: str) -> list[str]:
    """``07`` or ``01-03`` -> the numbers as text, keeping the zero padding."""
    low, _, high = item.partition("-")
    if not low.isdigit() or (high and not high.isdigit()):
        raise ValueError(f"bad range {item!r} in Slurm host list {whole!r}")
    if not high:
        return [low]
    if int(high) < int(low):
        raise ValueError(f"descending range {item!r} in Slurm host list {whole!r}")
    width = len(low)
    return [str(n).zfill(width) for n in range(int(low), int(high) + 1)]


def _expand_one(host: str, whole: str) -> list[str]:
    """One host pattern, possibly with several bracket groups (``r[1-2]n[3-4]``)."""
    opening = host.find("[")
    if opening < 0:
        if "]" in host:
            raise ValueError(f"unbalanced ']' in Slurm host list {whole!r}")
        return [host]
    closing = host.find("]", opening)
    prefix, inside, rest = host[:opening], host[opening + 1:closing], host[closing + 1:]
    numbers = [n for item in inside.split(",") for n in _expand_range(item, whole)]
    tails = _expand_one(rest, whole)
    return [f"{prefix}{number}{tail}" for number in numbers for tail in tails]


def expand_hostlist(text: str) -> list[str]:
    """``node[01-03,07],login`` -> ``["node01", "node02", "node03", "node07", "login"]``.

    ``ValueError`` naming the list for anything that is not Slurm's host list syntax.
    """
    text = text.strip()
    return [name for part in _split_top_level(text) for name in _expand_one(part, text)]


def expand_counts(text: str) -> list[int]:
    """``2(x3),1`` -> ``[2, 2, 2, 1]`` (``SLURM_JOB_CPUS_PER_NODE``, ``SLURM_TASKS_PER_NODE``)."""
    counts: list[int] = []
    for item in text.strip().split(","):
        match = _COUNT.match(item.strip())
        if match is None:
            raise ValueError(f"bad item {item!r} in Slurm count list {text!r}")
        counts.extend([int(match[1])] * int(match[2] or 1))
    return counts


@dataclass(frozen=True)
class SlurmAllocation:
    """The allocation this process runs in: its job id and, per node, CPUs and tasks."""

    job_id: str
    nodes: tuple[str, ...]
    cpus_per_node: tuple[int, ...]
    tasks_per_node: tuple[int, ...]
    cpus_per_task: int

    @property
    def tasks(self) -> int:
        """Tasks of the allocation (``salloc -n``): one worker each by default."""
        return sum(self.tasks_per_node)

    @property
    def cpus(self) -> int:
        """CPUs of the allocation: one worker each when a pool is sized "per CPU"."""
        return sum(self.cpus_per_node)

    def workers(self, per: str = "task") -> int:
        """How many workers to start: one per task (``per="task"``) or per CPU."""
        if per == "task":
            return self.tasks
        if per == "cpu":
            return self.cpus
        raise ValueError(f"per must be 'task' or 'cpu', got {per!r}")


def _matching(counts: list[int], nodes: list[str], variable: str) -> tuple[int, ...]:
    if len(counts) != len(nodes):
        raise ValueError(
            f"{variable} lists {len(counts)} nodes but SLURM_JOB_NODELIST has {len(nodes)}"
        )
    return tuple(counts)


def slurm_allocation(environ: Mapping[str, str] | None = None) -> SlurmAllocation | None:
    """The allocation described by ``environ`` (default ``os.environ``), or None outside one.

    Reads ``SLURM_JOB_ID``, ``SLURM_JOB_NODELIST``, ``SLURM_JOB_CPUS_PER_NODE``,
    ``SLURM_TASKS_PER_NODE`` (when absent, as in ``salloc`` without ``-n``: one task per
    node) and ``SLURM_CPUS_PER_TASK``. ``ValueError`` naming the variable for a value that
    cannot be read.
    """
    env = os.environ if environ is None else environ
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return None
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise ValueError(f"SLURM_JOB_ID={job_id} is set but SLURM_JOB_NODELIST is not")
    nodes = expand_hostlist(nodelist)
    cpus_text = env.get("SLURM_JOB_CPUS_PER_NODE")
    cpus = expand_counts(cpus_text) if cpus_text else [1] * len(nodes)
    tasks_text = env.get("SLURM_TASKS_PER_NODE")
    tasks = expand_counts(tasks_text) if tasks_text else [1] * len(nodes)
    per_task = env.get("SLURM_CPUS_PER_TASK", "1")
    if not per_task.isdigit() or int(per_task) < 1:
        raise ValueError(f"SLURM_CPUS_PER_TASK={per_task!r} is not a positive number")
    return SlurmAllocation(
        job_id=job_id, nodes=tuple(nodes),
        cpus_per_node=_matching(cpus, nodes, "SLURM_JOB_CPUS_PER_NODE"),
        tasks_per_node=_matching(tasks, nodes, "SLURM_TASKS_PER_NODE"),
        cpus_per_task=int(per_task),
    )
