"""Process inspection and bounded waiting for the worker tests (real processes, /proc)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import rpc_parallel as rp

T = TypeVar("T")

SHORT = rp.RpcSettings(heartbeat_interval=0.2, heartbeat_timeout=1.5)
"""Heartbeat settings for these tests: a stopped worker is noticed within 1.5 s."""


def process_state(pid: int) -> str | None:
    """The /proc state letter of ``pid`` ('R', 'S', 'T', 'Z' ...), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()[0]


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state, ppid, pgrp, ...)."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2 :].split()


def alive(pid: int) -> bool:
    """Running (or stopped), not a zombie and not gone."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def children(parent: int | None = None) -> dict[int, str]:
    """The children of ``parent`` (default: this process) and their state letters."""
    parent = os.getpid() if parent is None else parent
    found: dict[int, str] = {}
    for pid in all_pids():
        fields = stat_fields(pid)
        if fields is not None and int(fields[1]) == parent:
            found[pid] = fields[0]
    return found


def zombie_children() -> list[int]:
    return [pid for pid, state in children().items() if state == "Z"]


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid``."""
    found = []
    for pid in all_pids():
        fields = stat_fields(pid)
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(pid)
    return found


def pids_with_argument(argument: str) -> list[int]:
    """Live processes whose command line contains ``argument`` as one of its words."""
    found = []
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                words = file.read().split(b"\0")
        except OSError:
            continue
        if argument.encode() in words and alive(pid):
            found.append(pid)
    return found


def cmdline_bytes(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read()


def cmdline(pid: int) -> list[str]:
    return [word.decode() for word in cmdline_bytes(pid).split(b"\0") if word]


def environ(pid: int) -> bytes:
    with open(f"/proc/{pid}/environ", "rb") as file:
        return file.read()


async def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.02
) -> float:
    """Poll ``condition`` until true; fail after ``timeout`` s. Returns the time it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)
    return time.monotonic() - start


def wait_until_sync(condition: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


async def gone(pid: int, timeout: float = 10.0) -> float:
    """Wait until ``pid`` has exited (gone, or a zombie of some other parent)."""
    return await wait_until(lambda: not alive(pid), timeout, f"process {pid} to exit")


async def bounded(awaitable: Awaitable[T], timeout: float, what: str) -> T:
    try:
        return await asyncio.wait_for(awaitable, timeout)
    except TimeoutError:
        raise AssertionError(f"{what} did not finish within {timeout:g} s") from None


async def no_zombies(timeout: float = 5.0) -> None:
    """Every child of this process that has exited has been reaped (bounded wait)."""
    await wait_until(lambda: not zombie_children(), timeout,
                     f"zombie children {zombie_children()} to be reaped")
