"""What a worker's start costs: a worker process imports only what serving needs, and opens
the ``initializing`` connection only for an ``init_worker_state`` of its own
(docs/decisions/0029-lazy-imports.md, 0018).

On a machine with fewer cores than starting workers (8 Slurm steps on 2 cores), a worker's
start-up CPU is the spawn time, and most of it was imports: the launchers of other hosts,
map_reduce and the pools, the master's spawn pipeline, and the standard modules they pull in.
These tests spawn real worker processes (exec'd, not forked) and read their ``sys.modules``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import textwrap

import pytest

import rpc_parallel as rp
from rpc_parallel._master import Master
from rpc_parallel.launch import LaunchedProcess, LaunchRequest

from .lean import Lean, LeanWithInit

NEVER_IN_A_WORKER = frozenset({
    # What only a master (or a spawning worker) uses: imported by the first spawn.
    "rpc_parallel._spawn", "rpc_parallel._master", "rpc_parallel._prestart",
    "rpc_parallel._supervisor", "rpc_parallel.launch._fork_server",
    # Launchers of other hosts and the bundle: imported by the first rp.Remote / rp.Slurm.
    "rpc_parallel.launch.slurm", "rpc_parallel.launch._slurm_env", "rpc_parallel.launch.ssh",
    "rpc_parallel.launch._ssh", "rpc_parallel.launch.executable", "rpc_parallel.launch._boot",
    # Layer 7: imported by the first rp.map_reduce / rp.blocking / rp.Managed / rp.WorkerPool.
    "rpc_parallel.map_reduce", "rpc_parallel.blocking", "rpc_parallel.managed",
    "rpc_parallel.pool",
    # Standard modules only those (or a segment's mapping, a socket directory) need.
    "urllib", "urllib.parse", "ipaddress", "pathlib", "ctypes", "json", "tempfile", "shutil",
})


@dataclasses.dataclass(frozen=True)
class OverTheNetwork:
    """A local process that connects back over TCP + TLS, as a Slurm or ssh worker does."""

    inner: rp.Local = dataclasses.field(default_factory=rp.Local)

    @property
    def needs_network(self) -> bool:
        return True

    @property
    def can_use_prestarted(self) -> bool:
        return False

    def worker_command(self, name: str) -> list[str]:
        return self.inner.worker_command(name)

    async def launch(self, request: LaunchRequest) -> LaunchedProcess:
        return await self.inner.launch(request)


@pytest.mark.parametrize("network", [False, True], ids=["unix", "tcp-tls"])
async def test_a_worker_imports_nothing_it_never_needs(network: bool) -> None:
    how = OverTheNetwork() if network else rp.Local()
    # Named: a new interpreter (exec), not a fork of a template that imported it all once.
    async with await Lean.spawn(0, how=how, name="lean") as worker:
        modules = set(await worker.run(Lean.modules))
        assert "rpc_parallel._worker_main" in modules  # (it is a worker process)
        unexpected = sorted(modules & NEVER_IN_A_WORKER)
        assert not unexpected, f"a worker process imported {unexpected}"
        # The collector paused for the library's imports (decision 0029) and is on again;
        # what those imports made is frozen, the worker's own module's objects are not.
        enabled, frozen = await worker.run(Lean.collector)
        assert enabled and frozen > 10_000, (enabled, frozen)
        # What was left out comes when used: this worker spawns one of its own.
        assert await worker.run(Lean.child_add, 41) == 42


def test_the_package_imports_the_rest_on_first_use() -> None:
    """In a fresh interpreter: ``import rpc_parallel`` leaves them out, and every public
    name (``rp.__all__``, ``rpc_parallel.launch.__all__``) still resolves to its object."""
    code = textwrap.dedent("""
        import sys
        import rpc_parallel as rp
        import rpc_parallel.launch as launch
        report = {"loaded": sorted(sys.modules)}
        import gc
        report["collector"] = [gc.isenabled(), gc.get_freeze_count()]
        import json
        report["dir"] = sorted(set(rp.__all__) - set(dir(rp)))
        report["missing"] = [n for n in rp.__all__ if getattr(rp, n, None) is None]
        report["launch_missing"] = [n for n in launch.__all__ if getattr(launch, n, None) is None]
        from rpc_parallel.launch.slurm import Slurm, slurm_allocation
        from rpc_parallel.map_reduce import MapFunction
        from rpc_parallel.pool._pool import WorkerPool
        import rpc_parallel.blocking
        report["same"] = [rp.Slurm is Slurm, launch.Slurm is Slurm,
                          launch.slurm_allocation is slurm_allocation,
                          rp.MapFunction is MapFunction, rp.WorkerPool is WorkerPool,
                          rp.blocking is rpc_parallel.blocking, callable(rp.map_reduce.map)]
        try:
            rp.Slrum
        except AttributeError as error:
            report["typo"] = str(error)
        namespace = {}
        exec("from rpc_parallel import *", namespace)
        report["star"] = sorted(set(rp.__all__) - set(namespace))
        print(json.dumps(report))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    unexpected = sorted(set(report["loaded"]) & NEVER_IN_A_WORKER)
    assert not unexpected, f"import rpc_parallel imported {unexpected}"
    assert report["dir"] == [] and report["missing"] == [] and report["launch_missing"] == []
    assert report["same"] == [True] * 7
    assert report["typo"] == "module 'rpc_parallel' has no attribute 'Slrum'"
    assert report["star"] == []
    assert report["collector"] == [True, 0]  # (only a worker process pauses it)


async def test_only_a_worker_with_its_own_init_opens_the_initializing_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without an ``init_worker_state`` of its own, the registration ends both phases of the
    spawn; with one, the ``initializing`` call still comes first (its connection keeps
    heartbeats going while a blocking ``init_worker_state`` runs)."""
    announced: list[str] = []
    original = Master._initializing

    async def counting(self: Master, worker_id: str) -> None:
        announced.append(worker_id)
        await original(self, worker_id)

    monkeypatch.setattr(Master, "_initializing", counting)
    for cls, calls in ((Lean, 0), (LeanWithInit, 1)):
        announced.clear()
        async with await cls.spawn(1, name="lean") as worker:
            assert await worker.run(cls.add, 1) == 2
            assert await worker.run(cls.offset) == (1 if cls is LeanWithInit else None)
        assert len(announced) == calls, (cls.__name__, announced)
