"""Runs ``async def`` tests on a fresh event loop (uvloop when installed), and makes the
harness fixtures (loopback sshd, namespace host, bare Python, Slurm cluster) available to
every test under tests/."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from rpc_parallel.rpc import loop as rpc_loop

from .harness.fixtures import (  # noqa: F401 - fixtures, found by name
    _namespace_host_session,
    bare_python,
    loopback_sshd,
    namespace_host,
    slurm_cluster,
)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    arguments: dict[str, Any] = {
        name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames
    }
    rpc_loop.run(function(**arguments))
    return True
