"""Which shared-memory segments in /dev/shm a test may count as its own.

/dev/shm is the host's: another program using rpc_parallel (another test run, a benchmark)
creates and removes its segments while a test runs. A segment is named
``rpcp-<pid of its creator>-<tag>-<n>``, so a test counts only those its own processes
created (this process and its workers); counting every ``rpcp-*`` name made the tests fail
whenever another program's segments came or went meanwhile."""

from __future__ import annotations

import os

from rpc_parallel.rpc import _segments

from ..workers.support import alive, stat_fields


def creator(name: str) -> int:
    """The pid of the process that created the segment ``name``."""
    return int(name.split("-")[1])


def segments(*pids: int) -> set[str]:
    """The segments that this process or the processes ``pids`` (its workers) created."""
    owners = {os.getpid(), *pids}
    return {name for name in os.listdir("/dev/shm")
            if _segments.NAME_PATTERN.fullmatch(name) and creator(name) in owners}


def descends_from_us(pid: int) -> bool:
    """Whether ``pid`` is this process or one of its descendants (running)."""
    for _ in range(64):
        if pid == os.getpid():
            return True
        fields = stat_fields(pid)
        if fields is None or pid <= 1:
            return False
        pid = int(fields[1])
    return False


def not_foreign() -> set[str]:
    """The segments that may be this process's doing: created by it or a descendant, or by
    a process no longer running (a dead worker's leftover is a leak, whoever it was). Those
    of other programs still running on the host are not counted."""
    return {name for name in os.listdir("/dev/shm")
            if _segments.NAME_PATTERN.fullmatch(name)
            and (not alive(creator(name)) or descends_from_us(creator(name)))}


def describe(names: set[str], roles: dict[int, str]) -> str:
    """Each segment's creator (by role: master, worker), tag and state (lent or free)."""
    lines = []
    for name in sorted(names):
        pid = creator(name)
        try:
            with open(f"/dev/shm/{name}", "rb") as file:
                word = file.read(8)
        except FileNotFoundError:
            word = b"gone"
        state = {_segments.LENT: "lent", _segments.FREE: "free"}.get(word, repr(word))
        who = roles.get(pid, "another process")
        lines.append(f"{name} (created by the {who}, pid {pid}"
                     f"{'' if alive(pid) else ', gone'}; tag {name.split('-')[2]}; {state})")
    return "; ".join(lines) or "none"
