"""Workers from a shipped bundle (``rp.RemoteExecutable``) on the namespace host, whose
python is the bare venv: nothing of the master's install is used there."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import rpc_parallel as rp
from rpc_parallel.launch import _pack, _ssh
from rpc_parallel.launch._pack import Bundle
from rpc_parallel.launch.executable import RemoteExecutable

from ..harness.bare_python import BarePython
from ..harness.netns import NamespaceHost
from ..workers.support import bounded

APP = "rp_shipped_app"
SOURCE = textwrap.dedent("""
    import sys
    from collections.abc import AsyncIterator

    import msgspec

    import rpc_parallel as rp


    class Shipped(rp.Worker[int]):
        async def init_worker_state(self, offset: int) -> None:
            self.offset = offset

        @rp.rpc
        async def add(self, x: int) -> int:
            return x + self.offset

        @rp.pipe
        async def count(self, n: int) -> AsyncIterator[int]:
            for i in range(n):
                yield i + self.offset

        @rp.rpc
        async def files(self) -> list[str]:
            return [sys.executable, rp.__file__, msgspec.__file__, __file__]
""")


@pytest.fixture(scope="module")
def app() -> Iterator[tuple[ModuleType, Bundle]]:
    """A small application of its own, and its bundle (with msgspec, rpc_parallel ...)."""
    source = Path(tempfile.mkdtemp(prefix="rp-app-"))
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
def directory() -> Iterator[str]:
    """Where the bundle goes on the host (the namespace host shares this file system)."""
    path = tempfile.mkdtemp(prefix="rp-ship-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_bundle_copy_spawn_reuse_tamper_delete(
    namespace_host: NamespaceHost, bare_python: BarePython, directory: str,
    app: tuple[ModuleType, Bundle],
) -> None:
    module, bundle = app
    Shipped = module.Shipped
    ssh_host = namespace_host.ssh_host
    target = _ssh.SshTarget(ssh_host.alias, ssh_options=tuple(ssh_host.ssh_options))
    python = str(bare_python.python)
    exe = await RemoteExecutable._copy_bundle(target, directory, python, bundle)
    how = rp.Remote(ssh_host.alias, ssh_options=ssh_host.ssh_options, executable=exe)
    started = time.monotonic()
    w = await bounded(Shipped.spawn(5, how=how), 60, "spawn from the bundle")
    spawn_seconds = time.monotonic() - started
    try:
        assert w.host == namespace_host.hostname
        assert await w.run(Shipped.add, 1) == 6
        assert [x async for x in await w.run(Shipped.count, 3)] == [5, 6, 7]
        executable, *files = await w.run(Shipped.files)
        assert executable.startswith(str(bare_python.directory))
        assert all(file.startswith(exe.path + "/") for file in files), files
    finally:
        await w.close()
    print(f"spawn from the bundle on the namespace host: {spawn_seconds:.2f} s")

    # Reuse: the copy on the host is found and checked, not copied again.
    again = await RemoteExecutable._check_existing(target, exe.path, python, bundle)
    how_again = rp.Remote(ssh_host.alias, ssh_options=ssh_host.ssh_options, executable=again)
    async with await bounded(Shipped.spawn(7, how=how_again), 60, "spawn again") as w2:
        assert await w2.run(Shipped.add, 1) == 8

    # Tamper: a shipped file changed on the host is refused before anything runs.
    shipped = Path(exe.path) / "lib" / f"{APP}.py"
    shipped.write_text(shipped.read_text().replace("x + self.offset", "x - self.offset"))
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(Shipped.spawn(5, how=how), 60, "spawn from a tampered bundle")
    text = str(caught.value)
    assert f"lib/{APP}.py" in text and ssh_host.alias in text, text

    # Delete: every file it copied is gone.
    await exe.delete()
    assert os.listdir(directory) == []
    await rp.expert.shutdown_master()


async def test_a_host_python_that_cannot_load_the_bundle(
    namespace_host: NamespaceHost, bare_python: BarePython, directory: str,
    app: tuple[ModuleType, Bundle],
) -> None:
    """A bundle that needs another Python than the host's: the spawn fails naming both."""
    import hashlib
    import json

    from rpc_parallel.launch import _boot

    module, bundle = app
    ssh_host = namespace_host.ssh_host
    target = _ssh.SshTarget(ssh_host.alias, ssh_options=tuple(ssh_host.ssh_options))
    python = str(bare_python.python)
    exe = await RemoteExecutable._copy_bundle(target, directory, python, bundle)
    manifest = json.loads(bundle.manifest)
    manifest["python"]["version"] = [3, 99]
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    future = Bundle(bundle.sources, text, hashlib.sha256(text).hexdigest(), bundle.local_paths)
    root = Path(directory) / future.id
    shutil.copytree(exe.path, root)
    (root / _boot.MANIFEST).write_bytes(text)
    installed = RemoteExecutable(target, str(root), future, python, stdlib=exe.stdlib)
    how = rp.Remote(ssh_host.alias, ssh_options=ssh_host.ssh_options, executable=installed)
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(module.Shipped.spawn(1, how=how), 60, "spawn on the wrong python")
    text_error = str(caught.value)
    assert "3.99" in text_error and here in text_error and ssh_host.alias in text_error, (
        text_error)
    await exe.delete()
    await rp.expert.shutdown_master()
