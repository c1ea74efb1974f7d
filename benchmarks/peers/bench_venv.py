"""The peers' own virtualenv, ``.bench-venv`` at the repository root.

The peers come from the ``bench`` optional extra (``pip install -e .[bench,fast]``), never from
the library's runtime dependencies. If the extra cannot be installed as a whole, the package
and each peer are installed one by one, and a peer that fails is reported, not fatal.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".bench-venv"
STAMP = VENV / "bench-stamp.json"

#: What the ``bench`` extra holds; used directly while pyproject.toml does not declare it.
BENCH_PACKAGES: tuple[str, ...] = (
    "ray>=2.40,<3",
    "dask[distributed]>=2024.8",
    "loky>=3.4",
    "execnet>=2.1",
    "matplotlib>=3.8",
    "uvloop>=0.19",
    "msgspec>=0.18",
    "numpy>=1.26",
)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def inside() -> bool:
    """Whether this interpreter is the bench virtualenv's."""
    return Path(sys.prefix).resolve() == VENV.resolve()


def _declared_bench_extra() -> list[str] | None:
    try:
        data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return None
    extra = data.get("project", {}).get("optional-dependencies", {}).get("bench")
    return [str(x) for x in extra] if isinstance(extra, list) else None


def _fingerprint() -> str:
    h = hashlib.sha256()
    with contextlib.suppress(OSError):
        h.update((ROOT / "pyproject.toml").read_bytes())
    h.update("\n".join(BENCH_PACKAGES).encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def _pip(args: list[str], log: Path) -> bool:
    cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
    return done.returncode == 0


def install_failures() -> dict[str, str]:
    """Peers that the last bootstrap could not install: requirement -> reason."""
    try:
        data = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    failures = data.get("failures", {})
    return {str(k): str(v) for k, v in failures.items()} if isinstance(failures, dict) else {}


def ensure(refresh: bool, say: Callable[[str], None] = print) -> Path:
    """Create or refresh ``.bench-venv``; return its interpreter. Never raises for a peer."""
    if not venv_python().exists():
        say(f"creating {VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log = VENV / "install.log"
    try:
        stamp = json.loads(STAMP.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stamp = {}
    if not refresh and stamp.get("fingerprint") == _fingerprint() and not stamp.get("failures"):
        return venv_python()

    say(f"installing the peers into {VENV} (log: {log}) ...")
    declared = _declared_bench_extra()
    failures: dict[str, str] = {}
    whole = _pip(["-e", f"{ROOT}[bench,fast]"], log)
    if whole and declared is None:
        whole = _pip(list(BENCH_PACKAGES), log)
    if not whole:
        say("the bench extra did not install as a whole; installing piece by piece ...")
        if not _pip(["-e", f"{ROOT}[fast]"], log) and not _pip(["-e", str(ROOT)], log):
            failures["rpc_parallel"] = "pip install -e . failed"
        for req in declared if declared is not None else BENCH_PACKAGES:
            if not _pip([req], log):
                failures[req] = "pip install failed"
    for req, why in failures.items():
        say(f"  could not install {req}: {why} (see {log})")
    STAMP.write_text(
        json.dumps({"fingerprint": _fingerprint(), "failures": failures}, indent=1),
        encoding="utf-8",
    )
    return venv_python()


def reexec_inside(argv: list[str]) -> None:
    """Replace this process with the same run inside the bench virtualenv."""
    py = str(venv_python())
    env = dict(os.environ, BENCH_PEERS_IN_VENV="1")
    os.chdir(ROOT)
    os.execve(py, [py, "-m", "benchmarks.peers", *argv], env)
