"""Process and command helpers shared by the harness: bounded waits, clean stops, skips."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


class Unavailable(Exception):
    """This machine cannot provide the daemon (not root, a binary missing); fixtures skip."""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise Unavailable(f"{what} needs root (this test runs as uid {os.geteuid()})")


def require_binaries(what: str, *names: str) -> dict[str, str]:
    """Absolute paths of ``names`` (searched in PATH and the sbin directories)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin", "/usr/bin"])
    found: dict[str, str] = {}
    missing = []
    for name in names:
        path = shutil.which(name, path=search)
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise Unavailable(f"{what} needs {', '.join(missing)} (not installed; .ci/run installs it)")
    return found


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               interval: float = 0.05) -> None:
    """Poll ``predicate`` until true; ``TimeoutError`` naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def state(pid: int) -> str | None:
    """The process state letter of ``pid`` (``None`` once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2:][:1].decode()


def alive(pid: int) -> bool:
    """Running and not a zombie (PID 1 may reap late; a zombie counts as dead)."""
    letter = state(pid)
    return letter is not None and letter not in ("Z", "X")


def stop_pids(pids: Iterable[int], timeout: float = 10.0) -> None:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL whatever is left (and wait again)."""
    pids = [pid for pid in pids if alive(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        try:
            wait_until(lambda: not any(alive(p) for p in pids), timeout, f"pids {pids} to exit")
            return
        except TimeoutError:
            if sig == signal.SIGKILL:
                raise


def stop_popen(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop a child: SIGTERM, then SIGKILL after ``timeout`` s; always reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid`` (from /proc, children before grandchildren)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(children)
    return found


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment contains ``text`` (e.g. a harness directory)."""
    needle = text.encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                if needle in (entry / part).read_bytes() and alive(int(entry.name)):
                    found.append(int(entry.name))
                    break
            except OSError:
                continue
    return found


def run(argv: Sequence[str], *, timeout: float = 30.0, check: bool = True,
        input: str | None = None, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[str]:
    """Run a command with a bound; a failure raises ``RuntimeError`` with its stderr."""
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                                input=input, env=env, stdin=None if input is not None
                                else subprocess.DEVNULL)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{' '.join(argv)}: no result within {timeout:g} s") from error
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the caller binds it at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connect to (host, port) succeeds now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
