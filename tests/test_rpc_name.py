"""``rp.rpc`` is the decorator, ``rpc_parallel.rpc`` the RPC layer (docs/decisions/0008)."""

from __future__ import annotations

import importlib
import io
import pydoc
import subprocess
import sys
import textwrap
from pathlib import Path

import rpc_parallel as rp
import rpc_parallel.errors
from rpc_parallel.rpc import Connection, ProtocolError, connect_unix

ROOT = Path(__file__).resolve().parent.parent


def test_the_layer_is_a_module_and_rp_rpc_the_decorator() -> None:
    layer = importlib.import_module("rpc_parallel.rpc")
    assert layer.Connection is Connection and layer.connect_unix is connect_unix
    assert rp.rpc is not layer and callable(rp.rpc)
    # The layer's names are not set on the decorator.
    assert not hasattr(rp.rpc, "Connection")
    assert rp.ProtocolError is ProtocolError is rpc_parallel.errors.ProtocolError


def test_rp_rpc_declares_a_function() -> None:
    class Adder(rp.Worker[None]):
        @rp.rpc
        async def add(self, x: int) -> int:
            return x + 1

    assert isinstance(Adder.add, rp.Rpc)
    assert Adder.add.kind == "rpc"


def test_help_shows_the_decorator() -> None:
    out = io.StringIO()
    pydoc.Helper(output=out).help(rp.rpc)
    assert "Help on function rpc" in out.getvalue()
    assert "Declare a one-shot function" in out.getvalue()


SNIPPET = textwrap.dedent('''
    import rpc_parallel as rp
    from rpc_parallel.rpc import Connection, RpcSettings

    class W(rp.Worker[None]):
        @rp.rpc
        async def f(self, x: int) -> int:
            return x

    settings: RpcSettings = RpcSettings()
    connection: Connection | None = None
    function: rp.Rpc[W, [int], int] = W.f
''')


def test_both_type_checkers_accept_both_names(tmp_path: Path) -> None:
    path = tmp_path / "names.py"
    path.write_text(SNIPPET)
    mypy = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", "/dev/null",
         "--config-file", str(ROOT / "pyproject.toml"), str(path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert mypy.returncode == 0, mypy.stdout + mypy.stderr
    pyright = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "pyright"), str(path)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert pyright.returncode == 0, pyright.stdout + pyright.stderr
