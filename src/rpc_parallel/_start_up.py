"""The first thing a worker process runs: the cyclic garbage collector pauses while the
library imports.

``python -m rpc_parallel worker ...`` imports this package before its ``__main__``, and while
it does, ``sys.argv`` is ``["-m", "worker", ...]`` (the interpreter sets ``argv[0]`` to the
module's path only once it has found the module). Importing asyncio, msgspec and this
package makes many long-lived objects and next to no garbage, yet the collector traverses
them again and again as they are made, and once more, all of them, at the first collection
after. So the worker pauses it here, and ``resume`` (called before the worker's own module is
imported, which may make garbage that must stay collectable) moves what the imports made to
the permanent generation (``gc.freeze``) and turns the collector back on: about 7 ms of the
worker's CPU to its first result, measured here (docs/decisions/0029-lazy-imports.md).
Nothing else is affected: any other program, and a fork server's template, import this
package with the collector untouched.
"""

from __future__ import annotations

import gc
import sys

_paused = sys.argv[:2] == ["-m", "worker"] and gc.isenabled()
if _paused:
    gc.disable()


def resume() -> None:
    """Freeze what was imported and turn the collector back on, if this module turned it off
    (once; any later call, and in any other process: nothing)."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()
