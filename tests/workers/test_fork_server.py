"""The fork server (decision 0021): under ``start_app`` local workers are forks of a template.

Each test runs a real master program (``start_app``) in a session of its own and checks what
it prints and what is left in /proc afterwards: identity, output, fallbacks, and the failure
modes — the template killed, a fork that fails, a module that does not import in the
template, the master killed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from ..hardening.support import descendants, temp_entries
from .support import alive, bounded, gone

REPO = Path(__file__).resolve().parents[2]
PIDS_CGROUP = Path("/sys/fs/cgroup/pids")

PRELUDE = """
import asyncio, json, os, signal, sys, time
import rpc_parallel as rp
from tests.workers.forking.forked import Facts

def say(**fields):
    print(json.dumps(fields), flush=True)

async def facts(**spawn):
    async with await Facts.spawn(None, **spawn) as w:
        return await w.run(Facts.facts)
"""


async def run_master(tmp_path: Path, body: str, *args: str, env: dict[str, str] | None = None,
                     timeout: float = 60.0) -> tuple[int, list[dict[str, Any]], str, str]:
    """Run ``body`` (defining ``async def main``) under ``start_app``: its exit status,
    the JSON lines it printed, its whole stdout and its stderr."""
    script = tmp_path / "master.py"
    script.write_text(PRELUDE + textwrap.dedent(body)
                      + '\nif __name__ == "__main__":\n    rp.start_app(main)\n')
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
                       TMPDIR=str(tmp_path), **(env or {}))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), *args, cwd=str(tmp_path), env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await bounded(process.communicate(), timeout, "the master program")
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert process.returncode is not None
    return process.returncode, lines, out.decode(), err.decode()


def only(lines: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [line for line in lines if line.get("kind") == kind]
    assert len(found) == 1, (kind, lines)
    return found[0]


IDENTITY = """
async def main():
    master = os.getpid()
    first = await facts()
    second = await facts()
    burst = await asyncio.gather(*(Facts.spawn(None) for _ in range(6)))
    crowd = [await w.run(Facts.facts) for w in burst]
    await asyncio.gather(*(w.close() for w in burst))
    say(kind="forked", master=master, workers=[first, second, *crowd])
    moved = await facts(cwd="/", umask=0o027)
    say(kind="options", **moved)
    async with await Facts.spawn(None, redirect_stdout=rp.FileTruncate("out.txt"),
                                 redirect_stderr=rp.FileTruncate("err.txt")) as w:
        await w.run(Facts.say, "to files")
    async with await Facts.spawn(None) as w:
        await w.run(Facts.say, "forwarded")
        name = w.name
    say(kind="forwarded", name=name)
    falls_back = {
        "env": await facts(env={"MARK": "1"}),
        "name": await facts(name="named"),
        "wrap": await facts(how=rp.Wrap(["nice", "-n", "1"])),
        "python": await facts(how=rp.Local(python=sys.executable + "")),
    }
    w = await Facts.spawn(None, shutdown_on="called_shutdown")
    falls_back["called_shutdown"] = await w.run(Facts.facts)
    await w.shutdown()
    say(kind="fallbacks", master=master, **{k: v["ppid"] for k, v in falls_back.items()})
    say(kind="template", pid=first["ppid"])
"""


@pytest.mark.timeout(120)
async def test_forked_workers_have_their_own_identity_output_and_session(tmp_path: Path) -> None:
    code, lines, out, err = await run_master(tmp_path, IDENTITY)
    assert code == 0, err
    forked = only(lines, "forked")
    workers = forked["workers"]
    assert isinstance(workers, list) and len(workers) == 8
    template = workers[0]["ppid"]
    assert template != forked["master"]
    for worker in workers:
        assert worker["ppid"] == template, "every default spawn is a fork of the template"
        assert worker["sid"] == worker["pid"] == worker["pgid"], "a session of its own"
        assert worker["cwd"] == str(tmp_path)
    for field in ("random", "numpy", "pid"):
        values = [worker[field] for worker in workers]
        assert len(set(values)) == len(values), f"{field} repeats across forks: {values}"
    assert workers[0]["comm"].startswith("Facts-")
    for worker in workers[2:]:  # the burst of 6, forked back to back
        for other in workers[2:]:
            if other is not worker:
                shared = set(worker["pipes"].split(",")) & set(other["stdio"].split(","))
                assert not shared, "a forked worker holds another one's stdin/stdout/stderr"

    options = only(lines, "options")
    assert options["ppid"] == template
    assert (options["cwd"], options["umask"]) == ("/", 0o027)

    assert (tmp_path / "out.txt").read_text() == "out: to files\n"
    assert "err: to files" in (tmp_path / "err.txt").read_text()
    name = only(lines, "forwarded")["name"]
    assert f"[{name}] err: forwarded" in err
    assert f"[{name}] out: forwarded" in out

    fallbacks = only(lines, "fallbacks")
    master = fallbacks.pop("master")
    fallbacks.pop("kind")
    assert fallbacks == {"env": master, "name": master, "wrap": master,
                         "python": template, "called_shutdown": master}, fallbacks
    await gone(int(template), timeout=10.0)
    assert not temp_entries(str(tmp_path)), "a temporary file or socket was left behind"


TEMPLATE_KILLED = """
async def main():
    w = await Facts.spawn(None)
    before = await w.run(Facts.facts)
    os.kill(before["ppid"], signal.SIGKILL)
    started = time.monotonic()
    while os.path.exists(f"/proc/{before['pid']}") and time.monotonic() - started < 10:
        await asyncio.sleep(0.02)  # until it is gone (killed with its template)
    try:
        await asyncio.wait_for(w.run(Facts.facts), 10)
        error = None
    except rp.WorkerDied as died:
        error = str(died)
    except rp.Error as other:
        error = f"{type(other).__name__}: {other}"
    await w.close()
    say(kind="live worker", error=error, took=time.monotonic() - started, pid=before["pid"])
    started = time.monotonic()
    after = await asyncio.wait_for(facts(), 30)
    say(kind="next spawn", took=time.monotonic() - started, old=before["ppid"], **after)
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_a_killed_template_is_replaced_by_the_next_spawn(tmp_path: Path, loop: str) -> None:
    no_uvloop = {"RPC_PARALLEL_NO_UVLOOP": "1" if loop == "asyncio" else ""}
    code, lines, _, err = await run_master(tmp_path, TEMPLATE_KILLED, env=no_uvloop)
    assert code == 0, err
    live = only(lines, "live worker")
    # The worker forked from the killed template died with it, and says why.
    assert live["error"] is not None and "fork server" in str(live["error"]), live
    assert not alive(int(live["pid"]))
    after = only(lines, "next spawn")
    assert after["ppid"] != after["old"]
    assert after["ppid"] != after["pid"]
    await gone(int(after["ppid"]), timeout=10.0)


CGROUP = """
import pathlib
ROOT = pathlib.Path(sys.argv[1])
LIMITED = ROOT / f"rpc_parallel_test_{os.getpid()}"

def pids_cgroup(pid):
    for line in open(f"/proc/{pid}/cgroup"):
        _, controllers, path = line.rstrip("\\n").split(":", 2)
        if "pids" in controllers.split(","):
            return ROOT / path.lstrip("/")
    raise AssertionError("no pids cgroup")

async def main():
    first = await facts()
    template = first["ppid"]
    original = pids_cgroup(template)
    LIMITED.mkdir()
    try:
        (LIMITED / "pids.max").write_text("1")
        (LIMITED / "cgroup.procs").write_text(str(template))  # it cannot fork any more
        try:
            during = await facts()
        finally:
            (original / "cgroup.procs").write_text(str(template))
    finally:
        LIMITED.rmdir()
    after = await facts()
    say(kind="forks", master=os.getpid(), template=template, during=during["ppid"],
        after=after["ppid"])
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.access(PIDS_CGROUP, os.W_OK), reason="needs a writable pids cgroup")
async def test_a_fork_that_fails_falls_back_to_a_new_process(tmp_path: Path) -> None:
    """A real fork failure: the template is moved into a pids cgroup that allows no more
    processes (EAGAIN, even for root); the spawn still succeeds, as an exec'd process."""
    code, lines, _, err = await run_master(tmp_path, CGROUP, str(PIDS_CGROUP))
    assert code == 0, err
    forks = only(lines, "forks")
    assert forks["during"] == forks["master"], "the failed fork fell back to the exec path"
    assert forks["after"] == forks["template"], "the template forks again once it can"
    assert "cannot fork worker" in err and "fork failed" in err, err[-2000:]


THREADED = """
from tests.workers.forking.threaded import Threaded

async def main():
    forked = await facts()
    async with await Threaded.spawn(None) as w:
        parent = await w.run(Threaded.parent)
    after = await facts()
    say(kind="threaded", master=os.getpid(), parent=parent, forked=forked["ppid"],
        after=after["ppid"])
"""


@pytest.mark.timeout(120)
async def test_a_module_that_starts_a_thread_is_not_forked(tmp_path: Path) -> None:
    """The template refuses to fork once an import has started a thread in it (a real
    refusal of a real request); the spawn starts a new process, and says why; later spawns
    of other classes get a new template."""
    code, lines, _, err = await run_master(tmp_path, THREADED)
    assert code == 0, err
    result = only(lines, "threaded")
    assert result["parent"] == result["master"], "the worker started as a new process"
    assert result["forked"] != result["master"]
    # That template forks no more; the next spawn of another class has a new one.
    assert result["after"] not in (result["master"], result["forked"])
    assert "started-at-import" in err and "cannot fork worker" in err, err[-2000:]


NO_START = """
async def main():
    os.environ["PYTHONHOME"] = "/nonexistent"  # no interpreter starts with this
    started = time.monotonic()
    try:
        await facts(connection_timeout=5.0)
        error = None
    except rp.SpawnError as failed:
        error = str(failed)
    took = time.monotonic() - started
    del os.environ["PYTHONHOME"]
    after = await facts()
    say(kind="no start", error=error, took=took, master=os.getpid(), after=after["ppid"])
"""


@pytest.mark.timeout(120)
async def test_a_template_that_cannot_start_fails_nothing_but_the_spawn(tmp_path: Path) -> None:
    """The template's interpreter cannot start: the spawn falls back to a new process, which
    cannot start either, and fails with the ordinary SpawnError — no hang; once the
    environment is good again, the next spawn is forked."""
    code, lines, _, err = await run_master(tmp_path, NO_START)
    assert code == 0, err
    result = only(lines, "no start")
    assert result["error"] is not None and "exited with code" in result["error"], result
    assert float(result["took"]) < 30.0
    assert "cannot start the fork server" in err, err[-2000:]
    assert result["after"] != result["master"]


IMPORT_FAILS = """
os.environ["MASTER_ONLY_PID"] = str(os.getpid())
from tests.workers.forking.master_only import MasterOnly

async def main():
    try:
        await MasterOnly.spawn(None, connection_timeout=20)
        error = None
    except rp.SpawnError as failed:
        error = str(failed) + "\\n" + (failed.stderr_tail or "")
    still = await facts()
    say(kind="import", error=error, master=os.getpid(), ppid=still["ppid"])
"""


@pytest.mark.timeout(120)
@pytest.mark.parametrize("warm", ["1", "0"])
async def test_a_module_that_cannot_be_imported_fails_the_spawn_the_same_way(
        tmp_path: Path, warm: str) -> None:
    """Forked (warm=1) or exec'd (warm=0), the SpawnError names the class and the error."""
    code, lines, _, err = await run_master(tmp_path, IMPORT_FAILS,
                                        env={"RPC_PARALLEL_PRESTART": warm})
    assert code == 0, err
    result = only(lines, "import")
    error = str(result["error"])
    assert "cannot import worker class tests.workers.forking.master_only.MasterOnly" in error
    assert "ImportError: master_only imports only in the master" in error
    assert "exited with code 3" in error
    # The template is still good for the next spawn.
    assert (result["ppid"] != result["master"]) == (warm == "1")


SLOW_IMPORT = """
async def main():
    from tests.hardening.slow_import import SlowImport  # imported here at once
    os.environ["RPH_SLOW_IMPORT"] = os.path.abspath("template.pid")  # a new template sleeps
    started = time.monotonic()
    try:
        await SlowImport.spawn(None, connection_timeout=2.0)
        error = None
    except rp.SpawnError as failed:
        error = str(failed)
    took = time.monotonic() - started
    template = int(open("template.pid").read())
    say(kind="slow", error=error, took=took, template=template)
"""


@pytest.mark.timeout(120)
async def test_an_import_that_hangs_in_the_template_fails_within_connection_timeout(
        tmp_path: Path) -> None:
    code, lines, _, err = await run_master(tmp_path, SLOW_IMPORT)
    assert code == 0, err
    slow = only(lines, "slow")
    assert "did not fork it within connection_timeout (2 s)" in str(slow["error"]), slow
    assert "tests.hardening.slow_import" in str(slow["error"])
    assert float(slow["took"]) < 2.0 + 8.0
    await gone(int(slow["template"]), timeout=10.0)


MASTER_KILLED = """
async def main():
    workers = [await Facts.spawn(None) for _ in range(2)]
    workers.append(await Facts.spawn(None, shutdown_on="heartbeat_timeout"))
    found = [await w.run(Facts.facts) for w in workers]
    say(kind="pids", workers=[f["pid"] for f in found], template=found[0]["ppid"])
    await asyncio.sleep(3600)
"""


@pytest.mark.timeout(60)
async def test_a_killed_master_leaves_no_template_and_no_forked_worker(tmp_path: Path) -> None:
    script = tmp_path / "master.py"
    script.write_text(PRELUDE + textwrap.dedent(MASTER_KILLED)
                      + '\nif __name__ == "__main__":\n    rp.start_app(main)\n')
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]),
                       TMPDIR=str(tmp_path))
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=str(tmp_path), env=environment,
        stdout=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        assert process.stdout is not None
        line = await bounded(process.stdout.readline(), 30.0, "the workers' pids")
        pids = json.loads(line)
        below = descendants(process.pid)
        assert set(pids["workers"]) | {pids["template"]} <= below
        os.kill(process.pid, signal.SIGKILL)
        await process.wait()
        for pid in [*pids["workers"], pids["template"]]:
            await gone(pid, timeout=10.0)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert not temp_entries(str(tmp_path))


CYCLES = """
from tests.hardening.support import Snapshot, settle

async def cycle():
    async with await Facts.spawn(None) as w:
        await w.run(Facts.facts)
    w = await Facts.spawn(None)
    await w.run(Facts.facts)
    os.kill(w.pid, signal.SIGKILL)
    try:
        await w.run(Facts.facts)
    except rp.WorkerDied:
        pass
    await w.close()

async def main():
    await cycle()
    before = Snapshot.take()
    for _ in range(10):
        await cycle()
    took = await settle(before, 10.0, "after 10 forked spawn/kill cycles")
    say(kind="settled", took=took)
"""


@pytest.mark.timeout(120)
async def test_forked_spawn_and_kill_cycles_leave_nothing_behind(tmp_path: Path) -> None:
    """The master holds the same children, zombies, descriptors, threads and temporary
    files after 10 cycles of forked workers closed and killed (tests/hardening's Snapshot)."""
    code, lines, _, err = await run_master(tmp_path, CYCLES)
    assert code == 0, err
    only(lines, "settled")
    assert not temp_entries(str(tmp_path))


MAIN_SCRIPT_ONCE = """
import multiprocessing  # (its first import points __mp_main__ back at __main__)

with open("runs.txt", "a") as file:
    file.write(f"{__name__}\\n")

class Here(rp.Worker[None]):
    @rp.rpc
    async def where(self) -> list[int]:
        return [os.getpid(), os.getppid()]

async def main():
    workers = await asyncio.gather(*(Here.spawn(None) for _ in range(3)))
    places = [await w.run(Here.where) for w in workers]
    await asyncio.gather(*(w.close() for w in workers))
    with open(f"/proc/{places[0][1]}/status") as status:
        threads = [line for line in status if line.startswith("Threads:")][0].split()[1]
    say(kind="places", master=os.getpid(), places=places, template_threads=int(threads))
"""


@pytest.mark.timeout(120)
async def test_the_main_script_runs_once_in_the_template_not_in_each_fork(tmp_path: Path) -> None:
    """A worker class defined in the main script: the template runs the script (as
    ``__mp_main__``) once, and its forks use that module, even when the script's first
    ``import multiprocessing`` re-points ``__mp_main__``. The template, which has run its
    rehearsal (an event loop, closed), still has one thread."""
    code, lines, _, err = await run_master(tmp_path, MAIN_SCRIPT_ONCE)
    assert code == 0, err
    places = only(lines, "places")
    templates = {ppid for _, ppid in places["places"]}
    assert len(templates) == 1 and places["master"] not in templates, places
    assert (tmp_path / "runs.txt").read_text().split() == ["__main__", "__mp_main__"]
    assert places["template_threads"] == 1


def test_the_rehearsal_leaves_no_loop_thread_or_descriptor() -> None:
    """What the template runs before its first fork (decision 0028) must leave it fit to
    fork: no event loop set or running, no new thread (Python's or native), no descriptor."""
    import threading

    from rpc_parallel._worker_main import rehearse

    def state() -> tuple[set[str], set[str], set[int]]:
        return (set(os.listdir("/proc/self/fd")), set(os.listdir("/proc/self/task")),
                {thread.ident or 0 for thread in threading.enumerate()})

    rehearse()  # (libuv makes its signal pipe once per process, at its first loop)
    before = state()
    rehearse()
    after = state()
    assert [new - old for new, old in zip(after, before, strict=True)] == [set(), set(), set()]
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    assert asyncio.get_event_loop_policy()._local._loop is None  # type: ignore[attr-defined]
