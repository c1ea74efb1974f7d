"""The machine's floor: ``pingpong.c``, compiled at run time with the system ``cc``.

The C program times itself (fork and warm-up excluded); this adapter only starts it and reads
its numbers. Spawn and map have no C counterpart and are reported as not applicable.
"""

from __future__ import annotations

import atexit
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import ClassVar

from .base import Peer, check

SOURCE = Path(__file__).with_name("pingpong.c")
WINDOW = 256  # calls in flight per child in the "inflight" mode


class CFloorPeer(Peer):
    key = "floor_c"
    label = "floor: C socketpair"
    supports: ClassVar[frozenset[str]] = frozenset({"latency", "inflight", "bandwidth"})
    notes: ClassVar[dict[str, str]] = {
        "inflight": f"2 forked children, {WINDOW} calls in flight on each",
    }

    def __init__(self) -> None:
        cc = shutil.which("cc")
        if cc is None:
            raise ImportError("no C compiler: `cc` is not on PATH")
        tmp = Path(tempfile.mkdtemp(prefix="bench-pingpong-"))
        atexit.register(shutil.rmtree, tmp, True)
        self.exe = tmp / "pingpong"
        built = subprocess.run(
            [cc, "-O2", "-o", str(self.exe), str(SOURCE)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if built.returncode != 0:
            raise ImportError(f"`cc` failed to build pingpong.c: {built.stderr.strip()[-500:]}")
        self.cc_version = subprocess.run(
            [cc, "--version"], capture_output=True, text=True, timeout=10
        ).stdout.splitlines()[:1]

    def version(self) -> str | None:
        return self.cc_version[0] if self.cc_version else None

    def _run(self, *args: object) -> list[int]:
        done = subprocess.run(
            [str(self.exe), *map(str, args)], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"pingpong {args} failed: {done.stderr.strip()}")
        return [int(line) for line in done.stdout.split()]

    def latency(self, n: int) -> list[float]:
        return [ns / 1e9 for ns in self._run("lat", n)]

    def inflight(self, n: int) -> float:
        (ns,) = self._run("inflight", n, WINDOW)
        return ns / 1e9

    def echo(self, payload: bytes) -> float:
        (ns,) = self._run("echo", len(payload), 1)
        check(ns > 0, "echo time")
        return ns / 1e9


PEER = CFloorPeer
