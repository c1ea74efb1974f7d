"""``rp.Slurm(executable=...)``: workers from a shipped bundle (``rp.RemoteExecutable``) as
steps and as jobs, on the real single-node cluster. The bundle's interpreter is a bare venv
(``bare_python``: no msgspec, no rpc_parallel), so a worker that serves at all imports
nothing of the master's install; it also says where its modules came from."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import rpc_parallel as rp
from rpc_parallel.launch import _pack, _slurm_job, _ssh
from rpc_parallel.launch._pack import Bundle
from rpc_parallel.launch.executable import RemoteExecutable
from tests.harness.bare_python import BarePython
from tests.harness.slurm import SlurmCluster
from tests.harness.sshd import SshHost

from .support import (
    HERE,
    allocation,
    master_env,
    python,
    steps,
    tls_link,
    until,
    wait_for,
    wait_queue_empty,
)

APP = "rp_slurm_shipped_app"
SOURCE = textwrap.dedent("""
    import os
    import sys

    import msgspec

    import rpc_parallel as rp


    class Shipped(rp.Worker[int]):
        async def init_worker_state(self, offset: int) -> None:
            self.offset = offset

        @rp.rpc
        async def add(self, x: int) -> int:
            return x + self.offset

        @rp.rpc
        async def files(self) -> list[str]:
            return [sys.executable, rp.__file__, msgspec.__file__, __file__]

        @rp.rpc
        async def slurm(self) -> list[str]:
            return [os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_STEP_ID", "")]
""")


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[ModuleType, Bundle]]:
    """A small application of its own, and its bundle (with msgspec and rpc_parallel)."""
    source = Path(tempfile.mkdtemp(prefix="rp-slurm-app-"))
    (source / f"{APP}.py").write_text(SOURCE)
    sys.path.insert(0, str(source))
    try:
        import msgspec

        module = __import__(APP)
        yield module, _pack.pack([msgspec, module], None)
    finally:
        sys.path.remove(str(source))
        sys.modules.pop(APP, None)
        shutil.rmtree(source)


@pytest.fixture
def shipped(
    app: tuple[ModuleType, Bundle], bare_python: BarePython
) -> Iterator[tuple[type[rp.Worker[int]], RemoteExecutable]]:
    """The app's worker class, and its bundle copied (for the bare python) to a directory
    the node sees: the node is this machine, so a local directory is a shared one."""
    module, bundle = app
    directory = Path(tempfile.mkdtemp(prefix="rp-slurm-ship-"))
    directory.chmod(0o755)
    try:
        exe = asyncio.run(RemoteExecutable._copy_bundle(
            _ssh.DirectTarget(), str(directory), str(bare_python.python), bundle))
        yield module.Shipped, exe
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _check_isolated(files: list[str], exe: RemoteExecutable, bare: BarePython) -> None:
    executable, *modules = files
    assert executable.startswith(str(bare.directory)), executable
    assert all(module.startswith(exe.path + "/") for module in modules), modules


async def test_steps_run_from_the_bundle_under_a_bare_python(
    slurm_cluster: SlurmCluster, shipped: tuple[type[rp.Worker[int]], RemoteExecutable],
    bare_python: BarePython,
) -> None:
    Shipped, exe = shipped
    with allocation(slurm_cluster, 2) as job_id:
        async with await Shipped.spawn(5, how=rp.Slurm(executable=exe)) as handle:
            assert await handle.run(Shipped.add, 1) == 6  # type: ignore[attr-defined]
            _check_isolated(await handle.run(Shipped.files), exe, bare_python)  # type: ignore[attr-defined]
            job, step = await handle.run(Shipped.slurm)  # type: ignore[attr-defined]
            assert job == job_id and step.isdigit()
            assert tls_link(handle).version() == "TLSv1.3"
        await until(lambda: not steps(slurm_cluster), 15, "the step to end after close")


async def test_jobs_run_from_the_bundle_under_a_bare_python(
    outside: SlurmCluster, shipped: tuple[type[rp.Worker[int]], RemoteExecutable],
    bare_python: BarePython,
) -> None:
    Shipped, exe = shipped
    async with await Shipped.spawn(7, how=rp.Slurm(executable=exe)) as handle:
        assert await handle.run(Shipped.add, 1) == 8  # type: ignore[attr-defined]
        _check_isolated(await handle.run(Shipped.files), exe, bare_python)  # type: ignore[attr-defined]
        job, step = await handle.run(Shipped.slurm)  # type: ignore[attr-defined]
        assert job in outside.jobs() and step == ""
        script = outside.command(["scontrol", "write", "batch_script", job, "-"]).stdout
        assert str(bare_python.python) in script and ".boot" in script, script
        directory = _slurm_job._Private.path
        assert directory is not None and list(directory.glob("*.boot"))
    await until(lambda: not outside.jobs(), 20, "the job to end after close")


async def test_a_tampered_bundle_is_refused_on_the_node_naming_the_file(
    outside: SlurmCluster, shipped: tuple[type[rp.Worker[int]], RemoteExecutable],
) -> None:
    Shipped, exe = shipped
    changed = Path(exe.path) / "lib" / f"{APP}.py"
    changed.write_text(changed.read_text().replace("x + self.offset", "x - self.offset"))
    with allocation(outside, 2), pytest.raises(rp.SpawnError) as as_step:
        await Shipped.spawn(5, how=rp.Slurm(executable=exe))
    with pytest.raises(rp.SpawnError) as as_job:
        await Shipped.spawn(5, how=rp.Slurm(executable=exe))
    for caught, where in ((as_step, "in Slurm step"), (as_job, "Slurm job")):
        headline = str(caught.value).splitlines()[0]
        assert where in headline and "the node refused the bundle" in headline, headline
        assert f"changed file lib/{APP}.py" in headline, headline


def test_executable_must_be_a_remote_executable() -> None:
    with pytest.raises(TypeError, match=r"rp\.RemoteExecutable"):
        rp.Slurm(executable="/opt/bundle")  # type: ignore[arg-type]


def test_the_worker_command_is_the_bundles_stub_or_the_named_python(
    shipped: tuple[type[rp.Worker[int]], RemoteExecutable], bare_python: BarePython,
) -> None:
    _, exe = shipped
    stub = rp.Slurm(executable=exe).worker_command("w1")
    assert stub[:len(exe.python_argv())] == exe.python_argv()
    assert stub[0] == str(bare_python.python) and "-I" in stub
    assert stub[len(exe.python_argv()):][:2] == ["worker", "w1"]  # for ps
    with pytest.raises(ValueError, match="existing_on_host"):
        rp.Slurm(executable=exe, python="/opt/py/bin/python3")
    assert rp.Slurm(python="/opt/py/bin/python3").worker_command("w1")[:3] == [
        "/opt/py/bin/python3", "-m", "rpc_parallel"]
    assert rp.Slurm().worker_command("w1")[0] == sys.executable
    with pytest.raises(TypeError, match="python"):
        rp.Slurm(python="")


def test_a_master_ships_itself_with_the_public_api_and_runs_a_step_and_a_job(
    slurm_cluster: SlurmCluster, loopback_sshd: SshHost, bare_python: BarePython,
    tmp_path: Path,
) -> None:
    """The worker class is in the master's script: the bundle carries it (``main/``)."""
    directory = tmp_path / "bundles"
    env = master_env(slurm_cluster, **{_slurm_job.DIRECTORY_VARIABLE: str(tmp_path / "rp")})
    done = subprocess.run(
        ["timeout", "240", "salloc", "-N1", "-n2", "-t5", python(),
         str(HERE / "master_shipped.py"), loopback_sshd.alias, str(loopback_sshd.config),
         str(directory), str(bare_python.python)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=270)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    path = result["path"]
    for kind, offset in (("step", 1), ("job", 2)):
        added, executable, rp_file, msgspec_file, main_file, job, step = result[kind]
        assert added == offset + 1
        assert executable.startswith(str(bare_python.directory)), executable
        assert rp_file.startswith(path + "/lib/") and msgspec_file.startswith(path + "/lib/")
        assert main_file == f"{path}/main/master_shipped.py", main_file
        assert (job == result["allocation"]) == (kind == "step") and step.isdigit() == (
            kind == "step")
    assert not directory.exists() or not any(directory.iterdir())  # exe.delete()
    wait_queue_empty(slurm_cluster)
    private = tmp_path / "rp"
    wait_for(lambda: not private.exists() or not any(private.iterdir()), 15,
             "the master's watchdog to remove its job files")
