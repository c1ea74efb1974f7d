"""Deliverable 4: where worker classes may live (module, main script, pytest module)."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

import rpc_parallel as rp

from .support import bounded
from .workers import Echo

REPO = Path(__file__).resolve().parents[2]


class Greeter(rp.Worker[str]):
    """A worker class defined in the pytest module itself: no extra code needed."""

    async def init_worker_state(self, greeting: str) -> None:
        self.greeting = greeting

    @rp.rpc
    async def greet(self, who: str) -> str:
        return f"{self.greeting}, {who}"

    @rp.rpc
    async def where(self) -> tuple[str, str]:
        return __name__, rp.State.get().value


async def test_class_in_an_importable_module_without_start_app() -> None:
    assert rp.State.get() is not rp.State.WORKER
    async with await Echo.spawn(1) as w:
        assert await w.run(Echo.add, 1, 1) == 3
        facts = await w.run(Echo.settings)
        assert facts.role == "worker"


async def test_class_in_the_pytest_module() -> None:
    async with await Greeter.spawn("hello") as w:
        assert await w.run(Greeter.greet, "world") == "hello, world"
        module, role = await w.run(Greeter.where)
        assert module == __name__
        assert role == "worker"


async def run_script(
    path: Path, env: dict[str, str] | None = None, timeout: float = 60.0
) -> tuple[int, str, str]:
    environment = dict(os.environ)
    environment["PYTHONPATH"] = str(REPO / "src")  # this checkout's rpc_parallel
    environment.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(path), cwd=path.parent, env=environment,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await bounded(process.communicate(), timeout, f"script {path.name}")
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


MAIN_SCRIPT = '''
import os
import rpc_parallel as rp


class Doubler(rp.Worker[int]):
    async def init_worker_state(self, factor: int) -> None:
        self.factor = factor

    @rp.rpc
    async def double(self, x: int) -> int:
        return 2 * x * self.factor

    @rp.rpc
    async def facts(self) -> tuple[str, str, int]:
        return rp.State.get().value, __name__, os.getpid()


async def main() -> None:
    print("master state", rp.State.get().value, flush=True)
    async with await Doubler.spawn(3) as w:
        print("result", await w.run(Doubler.double, 7), flush=True)
        role, module, pid = await w.run(Doubler.facts)
        print("worker facts", role, module, pid != os.getpid(), flush=True)
    print("main done", flush=True)

'''


@pytest.mark.parametrize("guarded", [True, False], ids=["if-main-guard", "no-guard"])
async def test_class_in_the_main_script_through_start_app(tmp_path: Path, guarded: bool) -> None:
    script = tmp_path / "app.py"
    entry = (
        'if __name__ == "__main__":\n    rp.start_app(main)\n' if guarded else "rp.start_app(main)\n"
    )
    script.write_text(textwrap.dedent(MAIN_SCRIPT) + entry)
    code, out, err = await run_script(script)
    assert code == 0, err
    lines = out.splitlines()
    assert "master state master" in lines
    assert "result 42" in lines
    assert "worker facts worker __mp_main__ True" in lines
    # main ran once: in the master, never in the worker re-importing the script.
    assert lines.count("main done") == 1
    assert "Traceback" not in err
