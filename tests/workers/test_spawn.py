"""Deliverable 3: spawn options, handles, connections, serve, foreground, topologies."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

import rpc_parallel as rp
from rpc_parallel._state import process
from rpc_parallel.rpc import Server

from .support import alive, bounded, cmdline, cmdline_bytes, environ, gone, stat_fields, wait_until
from .workers import Echo, Plain


async def test_handle_attributes_and_command_line() -> None:
    name = f"attrs-{uuid.uuid4().hex[:6]}"
    async with await Echo.spawn(0, name=name) as w:
        assert uuid.UUID(w.id)
        assert w.name == name
        assert w.host == socket.gethostname()
        assert w.pid == await w.run(Echo.pid)
        assert w.pid != os.getpid()
        assert name in repr(w)
        argv = cmdline(w.pid)
        words = ["rpc_parallel", "worker", name, "child-of", f"{os.getpid()}@{socket.gethostname()}"]
        joined = " ".join(argv)
        assert " ".join(words) in joined, argv
        # The secret travels on stdin only: never on the command line or in the environment.
        secret = process().secret
        assert len(secret) >= 16
        assert secret not in cmdline_bytes(w.pid)
        assert secret.hex().encode() not in cmdline_bytes(w.pid)
        assert secret not in environ(w.pid)
        assert secret.hex().encode() not in environ(w.pid)
        # A worker is in its own session/process group (detached from the terminal's).
        fields = stat_fields(w.pid)
        assert fields is not None and int(fields[2]) == w.pid
    assert not alive(w.pid)


async def test_default_name_and_two_workers_have_distinct_ids() -> None:
    async with await Echo.spawn(0) as a, await Echo.spawn(0) as b:
        assert a.name.startswith("Echo") and b.name.startswith("Echo")
        assert a.id != b.id and a.name != b.name and a.pid != b.pid


async def test_env_cwd_umask(tmp_path: Path) -> None:
    os.environ["RP_TEST_INHERITED"] = "inherited"
    try:
        async with await Echo.spawn(
            0, env={"RP_TEST_VAR": "hello"}, cwd=tmp_path, umask=0o027
        ) as w:
            assert await w.run(Echo.environment, "RP_TEST_VAR") == "hello"
            assert await w.run(Echo.environment, "RP_TEST_INHERITED") == "inherited"
            assert await w.run(Echo.cwd) == str(tmp_path)
            assert await w.run(Echo.umask) == 0o027
        async with await Echo.spawn(0) as w:
            assert await w.run(Echo.environment, "RP_TEST_VAR") is None
            assert await w.run(Echo.cwd) == os.getcwd()
    finally:
        del os.environ["RP_TEST_INHERITED"]


async def test_wrap_nice() -> None:
    own = os.nice(0)
    async with await Echo.spawn(0, how=rp.Wrap(["nice", "-n", "5"])) as w:
        assert await w.run(Echo.niceness) == min(19, own + 5)
        assert "nice" not in cmdline(w.pid)  # nice exec'd the worker itself
        assert "worker" in cmdline(w.pid)


async def test_redirect_forward(capfd: pytest.CaptureFixture[str]) -> None:
    name = f"fwd-{uuid.uuid4().hex[:6]}"
    out: list[str] = []
    err: list[str] = []

    def seen() -> bool:
        captured = capfd.readouterr()
        out.append(captured.out)
        err.append(captured.err)
        return f"[{name}] out: hello" in "".join(out) and f"[{name}] err: hello" in "".join(err)

    async with await Echo.spawn(0, name=name) as w:
        await w.run(Echo.say, "hello")
        await wait_until(seen, 10.0, "forwarded output")
    assert f"[{name}] err: hello" not in "".join(out)


async def test_redirect_devnull(capfd: pytest.CaptureFixture[str]) -> None:
    name = f"null-{uuid.uuid4().hex[:6]}"
    async with await Echo.spawn(
        0, name=name, redirect_stdout=rp.DevNull(), redirect_stderr=rp.DevNull()
    ) as w:
        await w.run(Echo.say, "hidden")
    # close() waited for the exit and drained the output.
    captured = capfd.readouterr()
    assert "hidden" not in captured.out and "hidden" not in captured.err


@pytest.mark.parametrize("mode", ["append", "truncate"])
async def test_redirect_to_files(
    tmp_path: Path, mode: str, capfd: pytest.CaptureFixture[str]
) -> None:
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
    out_file.write_text("old out\n")
    err_file.write_text("old err\n")
    redirection: type[rp.FileAppend] | type[rp.FileTruncate] = (
        rp.FileAppend if mode == "append" else rp.FileTruncate
    )
    async with await Echo.spawn(
        0, redirect_stdout=redirection(out_file), redirect_stderr=redirection(str(err_file))
    ) as w:
        await w.run(Echo.say, "to file")
    out_text, err_text = out_file.read_text(), err_file.read_text()
    assert "out: to file" in out_text and "err: to file" in err_text
    assert "err: to file" not in out_text and "out: to file" not in err_text
    assert ("old out" in out_text) == (mode == "append")
    assert ("old err" in err_text) == (mode == "append")
    captured = capfd.readouterr()
    assert "to file" not in captured.out and "to file" not in captured.err


async def test_shutdown_on_connection_closed() -> None:
    w = await Echo.spawn(0, shutdown_on="connection_closed")
    connection = await w.connect("extra")
    await w.close()
    # close() waits for the exit and reaps it.
    assert not alive(w.pid)
    with pytest.raises(rp.ConnectionClosed):
        await w.run(Echo.add, 1)
    with pytest.raises(rp.Error):
        await bounded(connection.run(Echo.add, 1), 10.0, "a call on a dead worker")
    await w.close()  # closing twice is harmless


async def test_shutdown_on_heartbeat_timeout() -> None:
    w = await Echo.spawn(0, shutdown_on="heartbeat_timeout")
    connection = await w.connect("extra")
    await w.close()
    # The handle is closed, the worker goes on while the master lives.
    assert await connection.run(Echo.add, 1, 1) == 2
    assert alive(w.pid)
    await rp.expert.shutdown_master()
    await gone(w.pid, 10.0)
    await connection.close()


async def test_shutdown_on_called_shutdown() -> None:
    w = await Echo.spawn(0, shutdown_on="called_shutdown")
    connection = await w.connect("extra")
    await w.close()
    assert await connection.run(Echo.add, 1, 1) == 2
    await bounded(rp.expert.shutdown_master(), 10.0, "shutdown_master")
    # Neither closing its handle nor the end of the master's links ends it.
    assert alive(w.pid)
    assert await connection.run(Echo.add, 2, 2) == 4
    await bounded(w.shutdown(), 10.0, "shutdown()")
    await gone(w.pid, 10.0)
    await connection.close()


async def test_shutdown_ends_a_connection_closed_worker_too() -> None:
    w = await Echo.spawn(0)
    await bounded(w.shutdown(), 10.0, "shutdown()")
    assert not alive(w.pid)
    with pytest.raises(rp.ConnectionClosed):
        await w.run(Echo.add, 1)


async def test_connections_have_their_own_state() -> None:
    async with await Echo.spawn(0) as w:
        assert await w.run(Echo.whoami) is None
        first = await w.connect("one")
        second = await w.connect("two")
        assert await first.run(Echo.whoami) == "state:one"
        assert await second.run(Echo.whoami) == "state:two"
        assert await first.run(Echo.add, 1, 1) == 2
        reader = await second.run(Echo.count, 2)
        assert [x async for x in reader] == [0, 1]
        await first.close()
        assert await second.run(Echo.whoami) == "state:two"
        async with second:
            pass
        assert await w.run(Echo.add, 2, 2) == 4  # closing connections leaves the worker


async def test_serve_in_process_and_close_server() -> None:
    a = await Echo.serve(7)
    b = await Echo.serve(8, name="second")
    assert a.pid == b.pid == os.getpid()
    assert b.name == "second"
    assert await a.run(Echo.add, 1, 0) == 8
    assert await b.run(Echo.add, 1, 0) == 9
    kept = await a.connect("kept")
    assert await kept.run(Echo.whoami) == "state:kept"
    await a.close_server()
    # Existing connections go on; new ones are refused.
    assert await kept.run(Echo.add, 2, 0) == 9
    assert await a.run(Echo.add, 3, 0) == 10
    with pytest.raises(rp.Error):
        await bounded(a.connect("new"), 10.0, "connect after close_server")
    assert await b.run(Echo.add, 1, 0) == 9  # the other server is untouched
    await kept.close()
    await a.close()
    await b.close()


async def test_spawn_in_foreground() -> None:
    w, worker_process = await Echo.spawn_in_foreground(4)
    assert isinstance(worker_process, rp.WorkerProcess)
    assert worker_process.pid == w.pid
    fields = stat_fields(w.pid)
    assert fields is not None and int(fields[2]) == os.getpgrp()  # not detached
    assert await w.run(Echo.add, 1, 0) == 5
    await w.close()
    assert await bounded(worker_process.wait(), 10.0, "foreground exit status") == 0
    assert worker_process.returncode == 0


async def test_handle_passed_to_another_worker() -> None:
    async with await Echo.spawn(1) as a, await Echo.spawn(2) as b:
        # b connects to a (a connection of its own, with connection state) and runs add there.
        assert await b.run(Echo.add_through, a, 5) == (5 + 10 + 1, "state:peer")
        assert await a.run(Echo.add_through, b, 5) == (5 + 10 + 2, "state:peer")


async def test_worker_spawns_a_worker() -> None:
    async with await Echo.spawn(0) as w:
        child_pid, result = await w.run(Echo.spawn_and_use, 3)
        assert result == 4
        assert child_pid not in (w.pid, os.getpid())
        await gone(child_pid, 10.0)  # it closed its child
        kept = await w.run(Echo.spawn_and_keep, 5)
        assert alive(kept)
        argv = " ".join(cmdline(kept))
        assert f"child-of {w.pid}@{socket.gethostname()}" in argv
    # Its parent worker exited: so does the grandchild.
    await gone(kept, 10.0)


async def test_only_a_class_with_init_worker_state_announces_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Decision 0028: a worker whose class has no ``init_worker_state`` registers on its one
    connection to the master (no ``initializing`` call, so no second connection, thread or
    loop in the worker); one with it announces its start on a connection of its own first."""
    from rpc_parallel._master import Master

    announced: list[str] = []
    accepted: list[object] = []
    initializing, register = Master._initializing, Server._register

    async def counting(self: Master, worker_id: str) -> None:
        announced.append(worker_id)
        await initializing(self, worker_id)

    def counting_accepts(self: Server, connection: object) -> None:
        accepted.append(connection)
        register(self, connection)  # type: ignore[arg-type]

    monkeypatch.setattr(Master, "_initializing", counting)
    monkeypatch.setattr(Server, "_register", counting_accepts)
    async with await Plain.spawn(None) as plain:
        assert await plain.run(Plain.pid) == plain.pid
        assert (announced, len(accepted)) == ([], 1)
        async with await Echo.spawn(5) as echo:
            assert await echo.run(Echo.add, 1) == 1 + 10 + 5
            assert announced == [echo.id] and len(accepted) == 2 + 1
