"""Deliverable 6: RpcSettings reach every worker; the built-in log subscription."""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path

import rpc_parallel as rp

from .support import bounded
from .test_process_model import REPO, run_script
from .workers import Echo

SETTINGS_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
import rpc_parallel as rp
from rpc_parallel._state import process
from tests.workers.workers import Echo


async def main() -> None:
    mine = process().rpc_settings()
    async with await Echo.spawn(0) as w:
        worker = await w.run(Echo.settings)
        grandchild = await w.run(Echo.child_settings)
    print(json.dumps({{
        "master": [rp.State.get().value, mine.max_message_size, mine.handshake_timeout,
                   mine.heartbeat_interval, mine.heartbeat_timeout],
        "worker": [worker.role, worker.max_message_size, worker.handshake_timeout,
                   worker.heartbeat_interval, worker.heartbeat_timeout],
        "grandchild": [grandchild.role, grandchild.max_message_size,
                       grandchild.handshake_timeout, grandchild.heartbeat_interval,
                       grandchild.heartbeat_timeout],
    }}), flush=True)


rp.start_app(main, rpc_settings=rp.RpcSettings(heartbeat_interval=0.5, handshake_timeout=4.0))
"""


async def test_rpc_settings_from_start_app_and_environment_reach_every_worker(
    tmp_path: Path,
) -> None:
    script = tmp_path / "settings_app.py"
    script.write_text(textwrap.dedent(SETTINGS_SCRIPT.format(repo=str(REPO))))
    override = json.dumps({"heartbeat_timeout": 7.5, "max_message_size": 1048576})
    code, out, err = await run_script(script, env={"RPC_PARALLEL_RPC_SETTINGS": override})
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    # start_app's record, overridden key by key by the environment variable.
    expected = [1048576, 4.0, 0.5, 7.5]
    assert report["master"] == ["master", *expected]
    assert report["worker"] == ["worker", *expected]
    assert report["grandchild"] == ["worker", *expected]

    # Without the variable, start_app's record alone (the rest are the defaults).
    code, out, err = await run_script(script)
    assert code == 0, err
    report = json.loads(out.strip().splitlines()[-1])
    defaults = rp.RpcSettings()
    assert report["worker"] == ["worker", defaults.max_message_size, 4.0, 0.5,
                                defaults.heartbeat_timeout]


async def test_invalid_settings_environment_is_refused_by_name(tmp_path: Path) -> None:
    script = tmp_path / "settings_app.py"
    script.write_text(textwrap.dedent(SETTINGS_SCRIPT.format(repo=str(REPO))))
    code, _, err = await run_script(
        script, env={"RPC_PARALLEL_RPC_SETTINGS": '{"heartbeat_timout": 3}'}
    )
    assert code != 0
    assert "heartbeat_timout" in err


async def test_log_subscription_streams_worker_records() -> None:
    async with await Echo.spawn(0, name="logger") as w:
        reader = await w.subscribe_logs()
        other = await w.subscribe_logs()
        await w.run(Echo.warn, "careful now")
        await w.run(Echo.warn, "and again")
        first = await bounded(anext(reader), 10.0, "a log record")
        assert isinstance(first, rp.LogRecord)
        assert first.message == "careful now"
        assert first.level == logging.WARNING
        assert first.level_name == "WARNING"
        assert first.logger == "tests.workers"
        assert first.worker == "logger"
        assert first.created > 0
        second = await bounded(anext(reader), 10.0, "a second log record")
        assert second.message == "and again"
        assert [(await bounded(anext(other), 10.0, "records")).message for _ in range(2)] == [
            "careful now", "and again"
        ]
        await reader.aclose()
        await other.aclose()
        assert await w.run(Echo.add, 1, 1) == 2


async def test_log_subscription_sees_calls_of_other_connections() -> None:
    async with await Echo.spawn(0, name="logger2") as w:
        connection = await w.connect("logs")
        reader = await w.subscribe_logs()
        await connection.run(Echo.warn, "from the other connection")
        record = await bounded(anext(reader), 10.0, "a log record")
        assert record.message == "from the other connection"
        await reader.aclose()
        await connection.close()
