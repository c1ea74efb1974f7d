"""asyncio internals the per-frame path uses, behind a version gate.

``Serving.on_query`` runs an rpc call's first step with the connection's idle runner task set as
the current task, the way Python 3.12's eager tasks do, through asyncio's private
``_enter_task`` / ``_leave_task``. They exist (with these signatures) on every CPython this
package supports (3.11 to 3.13). On any other version, or if they are gone, ``enter_task``
raises ``RuntimeError`` -- what the real one raises when a task is already running -- and the
connection then queues the call to its runner task instead: slower, same behaviour.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

INLINE_FIRST_STEP = False
"""Whether ``enter_task`` / ``leave_task`` are asyncio's own (calls can be served inline)."""


def _no_enter_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    raise RuntimeError("serving a call inline needs asyncio's _enter_task")


def _no_leave_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]) -> None:
    """Never reached: ``_no_enter_task`` always raises first."""


enter_task = _no_enter_task
leave_task = _no_leave_task

if (3, 11) <= sys.version_info < (3, 14):
    try:
        from asyncio.tasks import _enter_task, _leave_task
    except ImportError:  # pragma: no cover - another implementation of asyncio.
        pass
    else:
        enter_task, leave_task = _enter_task, _leave_task
        INLINE_FIRST_STEP = True
