"""Opt-in progress of a map (``progress=True``): a tqdm bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

logger = logging.getLogger("rpc_parallel.map_reduce")

LOG_EVERY = 5.0
"""Seconds between two progress log lines when the output is not a terminal."""


class Progress:
    """Items done, rate and (when the input has a length) an ETA.

    On a terminal with the ``progress`` extra installed (tqdm) it draws a bar on stderr;
    otherwise it logs a line every ``LOG_EVERY`` seconds (and one at the end) to the
    ``rpc_parallel.map_reduce`` logger.
    """

    def __init__(self, what: str, total: int | None) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self.start = self.last_log = time.monotonic()
        self.bar: Any = None
        if sys.stderr is not None and sys.stderr.isatty():
            try:
                import tqdm  # type: ignore[import-not-found, import-untyped, unused-ignore]
            except ImportError:
                pass
            else:
                self.bar = tqdm.tqdm(total=total, desc=what, unit="item", smoothing=0.1)

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
            return
        now = time.monotonic()
        if now - self.last_log >= LOG_EVERY:
            self.last_log = now
            logger.info("%s", self.line(now))

    def line(self, now: float) -> str:
        """``what: done[/total] items, rate/s[, ETA]`` as logged."""
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done}"
        if self.total is not None:
            text += f"/{self.total}"
        text += f" items, {rate:.1f}/s"
        if self.total is not None and rate > 0:
            text += f", ETA {max(0.0, (self.total - self.done) / rate):.1f} s"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            logger.info("%s (finished)", self.line(time.monotonic()))


def length_of(inputs: object) -> int | None:
    """The input's length when it has one (a list, a range), else None (a generator)."""
    try:
        return len(inputs)  # type: ignore[arg-type]
    except TypeError:
        return None
