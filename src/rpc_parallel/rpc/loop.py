"""Event loop choice: uvloop when installed, asyncio's own otherwise."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def uvloop_available() -> bool:
    if os.environ.get("RPC_PARALLEL_NO_UVLOOP"):
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop: uvloop's if installed (``RPC_PARALLEL_NO_UVLOOP=1`` turns it off)."""
    if uvloop_available():
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop ``new_event_loop`` picks."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main)
