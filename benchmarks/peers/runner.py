"""The one command: every library in its own bounded subprocess, then JSON, markdown and PNG.

    python benchmarks/peers/run.py            # full setting, bootstraps .bench-venv
    python benchmarks/peers/run.py --quick    # smallest setting (smoke test)

See docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import bench_venv as venv
from .adapters import BY_KEY, REGISTRY
from .report import aggregate, write_chart, write_markdown
from .settings import SETTINGS, WORKLOADS, Setting

ROOT = venv.ROOT
DEFAULT_OUT = ROOT / "benchmarks" / "results"


def say(msg: str) -> None:
    print(msg, flush=True)


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpu_model": None,
        "memory_gib": None,
        "loadavg_at_start": None,
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_gib"] = round(int(line.split()[1]) / 2**20, 1)
                break
    with contextlib.suppress(OSError, AttributeError):
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    return info


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT), str(ROOT / "src")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
    return env


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])


def run_child(key: str, setting: Setting, work: Path, timeout: float) -> dict[str, Any]:
    """Run one library's child; whatever happens, return a library document."""
    out = work / f"{key}.json"
    log = work / f"{key}.log"
    t0 = time.monotonic()
    with open(log, "w", encoding="utf-8") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.peers.child",
                "--peer",
                key,
                "--setting",
                setting.name,
                "--out",
                str(out),
            ],
            cwd=ROOT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: everything it starts dies with it
        )
    exited = threading.Event()

    def wait_unreaped() -> None:
        # Wait for the exit without reaping, so the group id stays ours until killpg below.
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        exited.set()

    waiter = threading.Thread(target=wait_unreaped, daemon=True)
    waiter.start()
    timed_out = not exited.wait(timeout)
    # End the child if it is still running, and anything it left behind in its group
    # (cluster daemons, pool workers).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    waiter.join()
    rc = proc.wait()
    elapsed = time.monotonic() - t0

    entry = BY_KEY[key]
    doc: dict[str, Any]
    try:
        doc = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = {
            "key": key,
            "label": entry.label,
            "status": "running",
            "note": None,
            "version": None,
            "metrics": {},
        }
    if timed_out:
        doc["status"] = "timeout"
        doc["note"] = f"killed after {timeout:.0f} s; last output: {_tail(log)}"
    elif doc.get("status") == "running":
        doc["status"] = "failed"
        doc["note"] = f"exited with code {rc} mid-run; last output: {_tail(log)}"
    elif doc.get("status") == "timeout" and doc.get("note"):
        doc["note"] = f"{doc['note']}; last output: {_tail(log, 3)}"
    doc["duration_s"] = round(elapsed, 2)
    doc["log"] = str(log)
    return doc


def _dist(requirement: str) -> str:
    """The distribution name of a requirement string ("dask[distributed]>=1" -> "dask")."""
    name = requirement.strip()
    for sep in "[<>=!~; ":
        name = name.split(sep, 1)[0]
    return name.lower()


def _fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def one_line(doc: dict[str, Any]) -> str:
    parts = []
    for w in WORKLOADS:
        m = doc.get("metrics", {}).get(w.key)
        if not m or m.get("status") == "n/a":
            continue
        if m.get("status") == "ok":
            parts.append(f"{w.key} {_fmt(m['summary']['median'])} {w.unit}")
        else:
            parts.append(f"{w.key} ERROR")
    return " | ".join(parts)


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/peers/run.py",
        description="Compare rpc_parallel with its peers, side by side in one run.",
    )
    ap.add_argument("--quick", action="store_true", help="smallest setting (a smoke test)")
    ap.add_argument("--peers", help="comma-separated library keys to run (default: all)")
    ap.add_argument("--skip", help="comma-separated library keys not to run")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    ap.add_argument(
        "--no-venv",
        action="store_true",
        help="run in this interpreter; libraries it lacks are reported as not available",
    )
    ap.add_argument("--refresh-venv", action="store_true", help="reinstall the bench extra")
    ap.add_argument("--list", action="store_true", help="list the library keys and exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.list:
        for e in REGISTRY:
            say(f"{e.key:14} {e.label}{'  (bench extra: ' + e.dist + ')' if e.dist else ''}")
        return 0

    if not args.no_venv and not venv.inside() and not os.environ.get("BENCH_PEERS_IN_VENV"):
        venv.ensure(refresh=args.refresh_venv, say=say)
        venv.reexec_inside([a for a in argv if a != "--refresh-venv"])
    install_failures = venv.install_failures() if venv.inside() else {}

    setting = SETTINGS["quick" if args.quick else "full"]
    selected = [e.key for e in REGISTRY]
    if args.peers:
        wanted = [k.strip() for k in args.peers.split(",") if k.strip()]
        unknown = [k for k in wanted if k not in BY_KEY]
        if unknown:
            say(f"unknown library keys: {', '.join(unknown)} (see --list)")
            return 2
        selected = [k for k in selected if k in wanted]
    if args.skip:
        skipped = {k.strip() for k in args.skip.split(",")}
        selected = [k for k in selected if k not in skipped]

    out_dir: Path = args.out.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    machine = machine_info()
    say(
        f"peer benchmarks, {setting.name} setting, {len(selected)} libraries, "
        f"python {sys.executable}; logs in {work}"
    )

    docs: dict[str, dict[str, Any]] = {}
    done = 0
    for entry in REGISTRY:
        if entry.key not in selected:
            docs[entry.key] = {
                "key": entry.key,
                "label": entry.label,
                "status": "skipped",
                "note": "not selected for this run",
                "version": None,
                "metrics": {},
            }
            continue
        left = setting.run_limit_s - (time.monotonic() - t0)
        if left < 10:
            docs[entry.key] = {
                "key": entry.key,
                "label": entry.label,
                "status": "skipped",
                "note": "the run's time limit was spent before its turn",
                "version": None,
                "metrics": {},
            }
            say(f"[{done + 1}/{len(selected)}] {entry.label}: skipped (run time limit)")
            done += 1
            continue
        timeout = min(left, 8 * setting.workload_limit_s + 30)
        done += 1
        say(f"[{done}/{len(selected)}] {entry.label} ...")
        doc = run_child(entry.key, setting, work, timeout)
        failed_req = [r for r in install_failures if entry.dist and _dist(r) == entry.dist]
        if doc["status"] == "unavailable" and failed_req:
            doc["note"] = f"{doc['note']}; pip could not install {', '.join(failed_req)}"
        docs[entry.key] = doc
        detail = one_line(doc) if doc["status"] in ("ok", "timeout", "failed") else ""
        note = f" - {doc['note']}" if doc.get("note") else ""
        say(f"    {doc['status']} in {doc.get('duration_s', 0):.1f} s{note}")
        if detail:
            say(f"    {detail}")

    finished = dt.datetime.now(dt.UTC)
    result = aggregate(
        docs=[docs[e.key] for e in REGISTRY],
        setting=setting,
        machine=machine,
        started=started.isoformat(timespec="seconds"),
        finished=finished.isoformat(timespec="seconds"),
        duration_s=round(time.monotonic() - t0, 1),
        interpreter=sys.executable,
    )
    json_path = out_dir / "latest.json"
    tmp = out_dir / "latest.json.tmp"
    tmp.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    md_path = out_dir / "latest.md"
    png_path = out_dir / "latest.png"
    chart_note = write_chart(result, png_path)
    write_markdown(result, md_path, png_path.name if chart_note is None else None)
    say(f"wrote {json_path}")
    say(f"wrote {md_path}")
    say(f"wrote {png_path}" if chart_note is None else f"no chart: {chart_note}")
    if all(d["status"] in ("ok", "skipped") for d in docs.values()):
        shutil.rmtree(work, ignore_errors=True)  # nothing to look into
    else:
        say(f"logs kept in {work}")
    say(f"total {result['duration_s']:.1f} s")
    return 0
