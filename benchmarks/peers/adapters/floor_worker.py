"""The floor's worker process: serves inc / echo / map on an inherited socket until EOF.

Started as ``python -m benchmarks.peers.adapters.floor_worker FD``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

from .floor_proto import OP_ECHO, OP_INC, OP_MAP, FrameProtocol


class _Serve(FrameProtocol):
    def message(self, msg: Any) -> None:
        msg_id, op, value = msg
        if op == OP_INC:
            self.send((msg_id, value + 1))
        elif op == OP_ECHO:
            self.send((msg_id, value))
        elif op == OP_MAP:
            self.send((msg_id, [x + 1 for x in value]))
        else:
            raise ValueError(f"unknown op {op}")


async def _main(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    loop = asyncio.get_running_loop()
    _, proto = await loop.connect_accepted_socket(_Serve, sock)
    await proto.closed


def main() -> None:
    fd = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(fd))
    else:
        uvloop.run(_main(fd))


if __name__ == "__main__":
    main()
