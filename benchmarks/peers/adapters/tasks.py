"""Module-level functions that pickling libraries ship to their workers by reference."""

from __future__ import annotations

import time

CPU_SECONDS = 0.005
"""The CPU time of one item of the ``map_cpu`` workload."""


def inc(x: int) -> int:
    return x + 1


def echo(data: bytes) -> bytes:
    return data


def spin(x: int) -> int:
    """About ``CPU_SECONDS`` of CPU (a busy loop), then ``x``."""
    end = time.perf_counter() + CPU_SECONDS
    while time.perf_counter() < end:
        pass
    return x


def inc_many(xs: list[int]) -> list[int]:
    return [x + 1 for x in xs]


def chunks(items: list[int], parts: int) -> list[list[int]]:
    """``items`` cut into ``parts`` consecutive chunks of (nearly) equal size."""
    size = max(1, -(-len(items) // max(1, parts)))
    return [items[i : i + size] for i in range(0, len(items), size)]
