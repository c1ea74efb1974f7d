"""Failures across hosts (issue 9, item 5), with real ssh, a real namespace host, real
signals and a real partition. Detection times are printed (``-s`` shows them)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import rpc_parallel as rp

from ..harness.netns import NamespaceHost
from ..harness.sshd import SshHost
from ..workers.support import SHORT, alive, bounded, gone
from ..workers.test_failures import check_all_died, start_calls_in_flight
from ..workers.workers import Echo, Failures
from .test_ssh import remote

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _spawn_fails(how: rp.Remote, timeout: float = 10.0) -> tuple[rp.SpawnError, float]:
    started = time.monotonic()
    with pytest.raises(rp.SpawnError) as caught:
        await bounded(Echo.spawn(0, how=how, connection_timeout=timeout), timeout + 20,
                      "the failing spawn")
    elapsed = time.monotonic() - started
    assert elapsed < timeout + 5, f"the spawn took {elapsed:.1f} s to fail"
    return caught.value, elapsed


# ---------------------------------------------------------------------- cannot start


async def test_ssh_refused_wrong_port(loopback_sshd: SshHost) -> None:
    error, elapsed = await _spawn_fails(remote(loopback_sshd, port=_free_port()))
    text = str(error)
    assert loopback_sshd.alias in text and "over ssh" in text
    assert "Connection refused" in text, text
    print(f"ssh refused (wrong port) -> SpawnError in {elapsed:.2f} s")


async def test_ssh_refused_bad_key(loopback_sshd: SshHost) -> None:
    error, elapsed = await _spawn_fails(remote(loopback_sshd, user="rp-no-such-user"))
    assert loopback_sshd.alias in str(error)
    assert "Permission denied" in str(error), str(error)
    print(f"ssh refused (authentication) -> SpawnError in {elapsed:.2f} s")


async def test_host_unreachable(namespace_host: NamespaceHost) -> None:
    """The namespace host partitioned: its address answers nothing (packets are dropped)."""
    namespace_host.partition()
    ssh_host = namespace_host.ssh_host
    # A connection of its own (not the ControlMaster's, which predates the partition): the
    # config's ConnectTimeout (5 s) ends it, within connection_timeout.
    how = rp.Remote(ssh_host.alias, ssh_options=[
        *ssh_host.ssh_options, "-o", "ControlMaster=no", "-o", "ControlPath=none"])
    error, elapsed = await _spawn_fails(how, timeout=10.0)
    assert ssh_host.alias in str(error)
    assert "timed out" in str(error), str(error)
    print(f"host unreachable -> SpawnError in {elapsed:.2f} s")


async def test_wrong_python(loopback_sshd: SshHost) -> None:
    error, elapsed = await _spawn_fails(remote(loopback_sshd, python="/nonexistent/python3"))
    text = str(error)
    assert loopback_sshd.alias in text and "/nonexistent/python3" in text, text
    print(f"wrong python -> SpawnError in {elapsed:.2f} s")


# ---------------------------------------------------------------------- dying


async def test_remote_worker_killed(namespace_host: NamespaceHost) -> None:
    failures = Failures()
    w = await bounded(Echo.spawn(0, how=remote(namespace_host.ssh_host), on_failure=failures),
                      30, "remote spawn")
    try:
        assert w.pid in namespace_host.pids()
        calls = await start_calls_in_flight(w)
        started = time.monotonic()
        os.kill(w.pid, signal.SIGKILL)
        errors = await check_all_died(calls, started)
        elapsed = time.monotonic() - started
        assert all(namespace_host.hostname in str(e) or "over ssh" in str(e) for e in errors)
        failure = await failures.first(10.0)
        assert "over ssh" in str(failure)
        print(f"remote worker SIGKILLed -> calls failed with WorkerDied in {elapsed:.2f} s")
    finally:
        await w.close()
    assert w.pid not in namespace_host.pids()


async def test_partition_fails_calls_and_both_sides_clean_up(
    namespace_host: NamespaceHost,
) -> None:
    w = await bounded(Echo.spawn(0, how=remote(namespace_host.ssh_host)), 30, "remote spawn")
    try:
        calls = await start_calls_in_flight(w)
        ssh_client = w._supervisor.process  # type: ignore[union-attr]
        namespace_host.partition()  # (the nft command itself takes a moment)
        started = time.monotonic()
        errors = await check_all_died(calls, started)
        elapsed = time.monotonic() - started
        assert elapsed < SHORT.heartbeat_timeout + 6.0, elapsed  # (generous: a shared machine)
        assert any("heartbeat" in str(e) or "stopped answering" in str(e) for e in errors), errors
        # This side: the ssh client was killed and reaped.
        await bounded(ssh_client.wait(), 10.0, "the ssh client to be reaped")
        # The other side: the worker's own heartbeats time out and it exits, partition or not.
        waited = await _gone_from(namespace_host, w.pid, 10.0)
        print(f"partition -> calls failed in {elapsed:.2f} s; remote worker gone "
              f"{waited:.2f} s later")
    finally:
        await w.close()


async def _gone_from(host: NamespaceHost, pid: int, timeout: float) -> float:
    started = time.monotonic()
    while pid in host.pids():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"process {pid} still runs on {host.hostname}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


MODES = ("connection_closed", "heartbeat_timeout", "called_shutdown")
MASTER_SCRIPT = """\
import asyncio, json, sys
sys.path.insert(0, {repo!r})
import rpc_parallel as rp
from tests.workers.workers import Echo


async def main() -> None:
    how = rp.Remote({alias!r}, ssh_options={options!r})
    pids = {{}}
    for mode in ("connection_closed", "heartbeat_timeout", "called_shutdown"):
        handle = await Echo.spawn(0, how=how, shutdown_on=mode, redirect_stdout=rp.DevNull())
        assert await handle.run(Echo.add, 1, 1) == 2
        pids[mode] = handle.pid
        pids[mode + " directory"] = handle.address.split()[0].removeprefix("unix:")
    print(json.dumps(pids), flush=True)
    await asyncio.Event().wait()


rp.start_app(main, rpc_settings=rp.RpcSettings(heartbeat_interval=0.2, heartbeat_timeout=1.5))
"""


async def test_master_sigkill_ends_remote_workers_but_called_shutdown(
    namespace_host: NamespaceHost, tmp_path: Path,
) -> None:
    ssh_host = namespace_host.ssh_host
    script = tmp_path / "master.py"
    script.write_text(textwrap.dedent(MASTER_SCRIPT.format(
        repo=str(REPO), alias=ssh_host.alias, options=ssh_host.ssh_options)))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    master = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE, env=env)
    survivor: int | None = None
    sockets: dict[str, Path] = {}
    try:
        assert master.stdout is not None
        line = await bounded(master.stdout.readline(), 60.0, "the master's worker pids")
        found: dict[str, Any] = json.loads(line)
        survivor = found["called_shutdown"]
        sockets = {mode: Path(found.pop(f"{mode} directory")).parent for mode in MODES}
        pids: dict[str, int] = found
        assert set(pids.values()) <= set(namespace_host.pids())
        master.kill()
        started = time.monotonic()
        assert await master.wait() == -signal.SIGKILL
        for mode in ("connection_closed", "heartbeat_timeout"):
            await _gone_from(namespace_host, pids[mode], 10.0)
            assert not sockets[mode].exists(), "the worker left its socket directory"
        elapsed = time.monotonic() - started
        assert alive(survivor) and survivor in namespace_host.pids()
        print(f"master SIGKILLed -> remote workers gone in {elapsed:.2f} s")
    finally:
        if master.returncode is None:
            master.kill()
            await master.wait()
        if survivor is not None and alive(survivor):
            os.kill(survivor, signal.SIGKILL)
            await gone(survivor, 10.0)
        for directory in sockets.values():  # (the survivor's, SIGKILLed above)
            shutil.rmtree(directory, ignore_errors=True)


async def test_a_worker_that_cannot_connect_back(namespace_host: NamespaceHost) -> None:
    """The master's host set to an address the host cannot reach it at (inside the
    namespace, 127.0.0.1 is the namespace's own loopback): the worker says so and exits, and
    the spawn fails at once naming the host and the address it tried."""
    from rpc_parallel._state import process

    state = process()
    saved = state.master_host_setting
    state.master_host_setting = "127.0.0.1"
    try:
        error, elapsed = await _spawn_fails(remote(namespace_host.ssh_host))
    finally:
        state.master_host_setting = saved
    text = str(error)
    assert namespace_host.ssh_host.alias in text
    assert "cannot connect back to the master at tls:127.0.0.1:" in text, text
    print(f"cannot connect back -> SpawnError in {elapsed:.2f} s")
    await rp.expert.shutdown_master()
