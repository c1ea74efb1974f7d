"""Module-level functions that pickling libraries ship to their workers by reference."""

from __future__ import annotations


def inc(x: int) -> int:
    return x + 1


def echo(data: bytes) -> bytes:
    return data
