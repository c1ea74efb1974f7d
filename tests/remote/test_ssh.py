"""Workers on other hosts over a real sshd: the loopback sshd and the namespace host."""

from __future__ import annotations

from pathlib import Path

import pytest

import rpc_parallel as rp

from ..harness.netns import NamespaceHost
from ..harness.sshd import SshHost
from ..workers.support import alive, bounded, cmdline, gone
from ..workers.workers import Echo, Failures
from .test_network import every_kind


def remote(host: SshHost, **options: object) -> rp.Remote:
    return rp.Remote(host.alias, ssh_options=host.ssh_options, **options)  # type: ignore[arg-type]


async def test_spawn_over_the_loopback_sshd(loopback_sshd: SshHost) -> None:
    w = await bounded(Echo.spawn(100, how=remote(loopback_sshd)), 30, "remote spawn")
    try:
        await every_kind(w)
        assert w.pid != 0 and await w.run(Echo.pid) == w.pid
        assert any(part.startswith("tls:127.0.0.1:") for part in w.address.split())
    finally:
        await w.close()
    await rp.expert.shutdown_master()


async def test_spawn_into_the_namespace_host(namespace_host: NamespaceHost) -> None:
    w = await bounded(Echo.spawn(100, how=remote(namespace_host.ssh_host)), 30, "remote spawn")
    try:
        assert w.host == namespace_host.hostname
        assert w.pid in namespace_host.pids()
        await every_kind(w)
        assert f"tls:{namespace_host.address}:" in w.address
        assert w._link is not None
        # (a dual-stack listener sees IPv4 peers as mapped addresses)
        assert w._link.peer_address[0].removeprefix("::ffff:") == namespace_host.address
    finally:
        await w.close()
    await rp.expert.shutdown_master()


async def test_spawn_options_work_remotely(
    loopback_sshd: SshHost, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    err.write_text("kept\n")
    w = await bounded(Echo.spawn(
        0, how=remote(loopback_sshd), name="far-away", env={"RP_REMOTE": "yes it's 'quoted'"},
        cwd=str(tmp_path), redirect_stdout=rp.FileTruncate(out),
        redirect_stderr=rp.FileAppend(err), umask=0o027,
    ), 30, "remote spawn")
    try:
        assert w.name == "far-away"
        assert await w.run(Echo.environment, "RP_REMOTE") == "yes it's 'quoted'"
        assert await w.run(Echo.cwd) == str(tmp_path)
        assert await w.run(Echo.umask) == 0o027
        await w.run(Echo.say, "hello")
    finally:
        await w.close()
    assert out.read_text() == "out: hello\n"
    assert err.read_text().startswith("kept\n") and "err: hello" in err.read_text()

    forwarded = await bounded(Echo.spawn(0, how=remote(loopback_sshd), name="fwd"), 30, "spawn")
    try:
        await forwarded.run(Echo.say, "over ssh")
    finally:
        await forwarded.close()
    captured = capfd.readouterr()
    assert "[fwd] out: over ssh" in captured.out
    assert "[fwd] err: over ssh" in captured.err
    await rp.expert.shutdown_master()


async def test_wrap_prefix_runs_on_the_remote_side(loopback_sshd: SshHost) -> None:
    how = rp.Wrap(["nice", "-n", "7"], how=remote(loopback_sshd))
    w = await bounded(Echo.spawn(0, how=how), 30, "wrapped remote spawn")
    try:
        assert await w.run(Echo.niceness) == 7
        ssh_client = w._supervisor.process  # type: ignore[union-attr]
        argv = cmdline(ssh_client.pid)
        assert argv[0] == "ssh" and "nice -n 7" in argv[-1]  # inside the remote command
    finally:
        await w.close()
    await rp.expert.shutdown_master()


@pytest.mark.parametrize("mode", ["connection_closed", "heartbeat_timeout", "called_shutdown"])
async def test_shutdown_modes_remotely(loopback_sshd: SshHost, mode: str) -> None:
    failures = Failures()
    w = await bounded(Echo.spawn(0, how=remote(loopback_sshd), shutdown_on=mode,  # type: ignore[arg-type]
                                 on_failure=failures), 30, "remote spawn")
    pid = w.pid
    await w.close()
    if mode == "connection_closed":
        await gone(pid)
    else:
        assert alive(pid)
    await rp.expert.shutdown_master()
    if mode == "heartbeat_timeout":
        await gone(pid)
    if mode == "called_shutdown":
        assert alive(pid)
        await w.shutdown()
        await gone(pid)
    assert failures.items == []


async def test_on_failure_and_worker_failure_remotely(loopback_sshd: SshHost) -> None:
    failures = Failures()
    w = await bounded(Echo.spawn(0, how=remote(loopback_sshd), on_failure=failures), 30,
                      "remote spawn")
    try:
        await w.run(Echo.fail_in_background, "far away")
        failure = await failures.first(10.0)
        assert "far away" in str(failure)
        await gone(w.pid)
    finally:
        await w.close()
    await rp.expert.shutdown_master()


def tls_only(handle: rp.WorkerHandle[Echo]) -> rp.WorkerHandle[Echo]:
    """The same worker, reachable only at its TLS address (the namespace host shares this
    machine's files, so its Unix socket would otherwise be used)."""
    from rpc_parallel._handle import WorkerHandle

    address = " ".join(part for part in handle.address.split() if part.startswith("tls:"))
    assert address, handle.address
    return WorkerHandle(worker_id=handle.id, name=handle.name, pid=handle.pid, host=handle.host,
                        address=address, worker_class=handle.worker_class)


async def test_handles_between_a_local_and_a_remote_worker(namespace_host: NamespaceHost) -> None:
    far = await bounded(Echo.spawn(1000, how=remote(namespace_host.ssh_host)), 30, "remote spawn")
    near = await bounded(Echo.spawn(2000), 30, "local spawn")
    try:
        assert far.host == namespace_host.hostname and near.host != far.host
        # The remote worker reaches the local one at '@master' = the master's host as it
        # sees it (the host side of the veth link), the local one reaches the remote one at
        # the namespace's address.
        assert await far.run(Echo.add_through, tls_only(near), 1) == (2011, "state:peer")
        assert await near.run(Echo.add_through, tls_only(far), 2) == (1012, "state:peer")
        # And with the handles as they are.
        assert await far.run(Echo.add_through, near, 3) == (2013, "state:peer")
        assert await near.run(Echo.add_through, far, 4) == (1014, "state:peer")
        # The master itself, too.
        async with await tls_only(far).connect("master") as connection:
            assert await connection.run(Echo.whoami) == "state:master"
    finally:
        await near.close()
        await far.close()
    await rp.expert.shutdown_master()
