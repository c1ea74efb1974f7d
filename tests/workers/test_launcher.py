"""The launcher seam: spawn(how=...) takes any Launcher; bad launcher values are refused."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

import rpc_parallel as rp
from rpc_parallel.launch import LaunchedProcess, Launcher, LaunchRequest

from .support import no_zombies
from .workers import Echo


@dataclass
class Recording:
    """A launcher of its own: runs the worker locally through Local, recording requests."""

    inner: rp.Local = field(default_factory=rp.Local)
    requests: list[LaunchRequest] = field(default_factory=list)

    @property
    def needs_network(self) -> bool:
        return False

    @property
    def can_use_prestarted(self) -> bool:
        return False

    def worker_command(self, name: str) -> list[str]:
        return self.inner.worker_command(name)

    async def launch(self, request: LaunchRequest) -> LaunchedProcess:
        self.requests.append(request)
        return await self.inner.launch(request)


async def test_a_launcher_of_ones_own_starts_the_worker() -> None:
    launcher = Recording()
    assert isinstance(launcher, Launcher)
    w = await Echo.spawn(1, how=launcher)
    try:
        assert await w.run(Echo.add, 2, 3) == 6
        [request] = launcher.requests
        assert request.name == w.name and request.new_session
        assert request.command[-4:-2] == ["worker", w.name]
    finally:
        await w.close()
    await no_zombies()


async def test_wrap_puts_its_prefix_on_the_inner_launchers_command() -> None:
    launcher = Recording()
    w = await Echo.spawn(1, how=rp.Wrap(["env", "RPC_PARALLEL_TEST_WRAPPED=1"], how=launcher))
    try:
        [request] = launcher.requests
        assert list(request.command[:2]) == ["env", "RPC_PARALLEL_TEST_WRAPPED=1"]
        assert list(request.command[2:]) == launcher.worker_command(w.name)
    finally:
        await w.close()
    await no_zombies()


@pytest.mark.parametrize("host", ["", "-oProxyCommand=touch /tmp/x", "two words"])
def test_remote_refuses_a_bad_host_by_name(host: str) -> None:
    """(Spawning over ssh is tested in tests/remote with a real sshd.)"""
    with pytest.raises(ValueError, match="not a host name"):
        rp.Remote(host)
    with pytest.raises(ValueError, match="not a port"):
        rp.Remote("node7", port=0)
    with pytest.raises(TypeError, match="sequence of strings"):
        rp.Remote("node7", ssh_options="-F cfg")


async def test_a_value_that_is_no_launcher_is_refused_by_name() -> None:
    with pytest.raises(TypeError, match=r"how must be rp\.Local"):
        await Echo.spawn(1, how="local")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Wrap\(how=...\)"):
        rp.Wrap(["nice"], how="local")  # type: ignore[arg-type]


def test_remote_workers_get_the_masters_import_path_made_absolute() -> None:
    """A remote worker starts in its login directory: '' (the master's working directory)
    in the master's sys.path becomes that directory's absolute path."""
    import os

    paths = rp.Remote("node7").worker_paths(["", "/opt/lib"], "/home/a/main.py")
    assert paths == ([os.getcwd(), "/opt/lib"], "/home/a/main.py")
    assert rp.Wrap(["nice"], how=rp.Remote("node7")).worker_paths([""], None) == (
        [os.getcwd()], None)
