"""#11.2: a script without the ``__main__`` guard; #11.3: the worker's ``sys.argv`` is the
master's (top-level argparse works), and ``python - < script.py`` gets a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import run_program, write_program

NO_GUARD = """
import asyncio
import rpc_parallel as rp


class Adder(rp.Worker[int]):
    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + self.offset


async def main() -> None:
    async with await Adder.spawn(1, connection_timeout=5.0) as w:
        print(await w.run(Adder.add, 1))


asyncio.run(main())   # no `if __name__ == "__main__":` guard
"""


@pytest.mark.timeout(60)
async def test_no_main_guard_is_refused_with_the_multiprocessing_hint(tmp_path: Path) -> None:
    ran = await run_program(write_program(tmp_path, "unguarded.py", NO_GUARD), timeout=20.0)
    assert not ran.timed_out, f"still running after 20 s; {len(ran.workers_seen)} workers seen"
    assert len(ran.workers_seen) <= 1, f"{len(ran.workers_seen)} worker processes were started"
    assert ran.returncode != 0
    assert "if __name__ == '__main__':" in ran.err, ran.err[-3000:]
    assert "unguarded.py" in ran.err


ARGPARSE = """
import argparse
import sys
import rpc_parallel as rp

parser = argparse.ArgumentParser()
parser.add_argument("--count", type=int, required=True)
ARGS = parser.parse_args()   # at top level, as many scripts do


class Reporter(rp.Worker[None]):
    @rp.rpc
    async def argv(self) -> list[str]:
        return sys.argv


async def main() -> None:
    async with await Reporter.spawn(None) as w:
        print(repr((await w.run(Reporter.argv), sys.argv)))


if __name__ == "__main__":
    rp.start_app(main)
"""


@pytest.mark.timeout(60)
async def test_worker_sys_argv_is_the_masters(tmp_path: Path) -> None:
    ran = await run_program(write_program(tmp_path, "cli.py", ARGPARSE), "--count", "3")
    assert ran.returncode == 0, ran.err[-3000:]
    worker_argv, master_argv = eval(ran.out.strip().splitlines()[-1])
    assert worker_argv == master_argv
    assert worker_argv[1:] == ["--count", "3"]


FROM_STDIN = """
import rpc_parallel as rp


class Adder(rp.Worker[int]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x


async def main() -> None:
    async with await Adder.spawn(1, connection_timeout=10.0) as w:
        print(await w.run(Adder.add, 1))


if __name__ == "__main__":
    rp.start_app(main)
"""


@pytest.mark.timeout(60)
async def test_script_from_stdin_gets_a_clear_error(tmp_path: Path) -> None:
    script = write_program(tmp_path, "unused.py", "")
    ran = await run_program(script, stdin=FROM_STDIN.encode(), argv0="-", timeout=30.0)
    assert not ran.timed_out
    assert ran.returncode != 0
    assert len(ran.workers_seen) <= 1
    assert "stdin" in ran.err and "<stdin>'" not in ran.err, ran.err[-3000:]
    assert "Traceback" not in ran.err.split("rpc_parallel")[0] or "Error" in ran.err


ARGPARSE_TWICE = ARGPARSE.replace(
    "    async with await Reporter.spawn(None) as w:\n",
    "    async with await Reporter.spawn(None) as first:\n"
    "        await first.run(Reporter.argv)\n"
    "    async with await Reporter.spawn(None) as w:  # a pre-started process\n",
)


@pytest.mark.timeout(60)
async def test_prestarted_worker_imports_the_script_with_the_masters_argv(tmp_path: Path) -> None:
    """Under start_app a spawn is a fork of the fork server, which imported the script
    before any configuration came: it had the master's argv already."""
    assert ARGPARSE_TWICE != ARGPARSE
    ran = await run_program(write_program(tmp_path, "cli.py", ARGPARSE_TWICE), "--count", "3")
    assert ran.returncode == 0, ran.err[-3000:]
    worker_argv, master_argv = eval(ran.out.strip().splitlines()[-1])
    assert worker_argv == master_argv and worker_argv[1:] == ["--count", "3"]
    assert ran.workers_seen  # the fork server's template (its forks live too briefly to see)
    assert "usage:" not in ran.err and "cannot import" not in ran.err, ran.err[-3000:]
