#!/usr/bin/env python3
"""Long run (not in CI): at least a million mutated frames against a live RPC server.

The frames are mutations of VALID frames captured from a real session with the server (a
QUERY of every kind, stream ITEMs/END/CREDIT/ABORT, HEARTBEAT, CLOSE, and the handshake's
HELLO/AUTH): bytes flipped, lengths changed, types, call ids and function indexes changed,
truncated, spliced, duplicated — plus some noise. Most go after a real authentication (the
parser behind the handshake is what the secret protects, and a bug there is still a crash);
some go before it. The client reconnects whenever the server closes on it.

It prints frames/s and the server's RSS, fds and connections over time, then checks the
server: alive, still serving a good client, back to its fds, RSS not grown beyond --max-growth.
Exit status 0 = flat, 1 = the server died or grew.

    python scripts/long/fuzz_frames.py                      # 1,000,000 frames (or 15 min)
    python scripts/long/fuzz_frames.py --frames 50000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "src"), str(REPO)]
# Workers (and the fuzzed server) import this same tree, not whatever is installed.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO),
                                            os.environ.get("PYTHONPATH", "")])

from rpc_parallel.rpc import FunctionSpec, connect_unix  # noqa: E402
from tests.hardening.support import (  # noqa: E402
    ABORT,
    AUTH,
    CLOSE,
    CREDIT,
    END,
    HEADER,
    HEARTBEAT,
    ITEM,
    QUERY,
    fd_count,
    frame,
    hello,
    raw_handshake,
    rss_bytes,
    unix_socket,
)

MiB = 2**20
SERVER = REPO / "tests/hardening/programs/server.py"
HIT = FunctionSpec("hit", kind="rpc", parameters=[("x", int)], response=int)
STATUS = FunctionSpec("status", kind="rpc", response=tuple[int, int])


def captured_frames(rng: random.Random) -> list[bytes]:
    """Valid frames, as a real client sends them to this server (menu positions 0..6)."""
    frames = []
    for call_id in range(1, 40, 2):
        frames += [
            frame(QUERY, [rng.randrange(1 << 62)], call_id=call_id, argument=0),   # hit
            frame(QUERY, [], call_id=call_id, argument=1),                         # hits
            frame(QUERY, [os.urandom(rng.randrange(64))], call_id=call_id, argument=2),
            frame(QUERY, [rng.randrange(50)], call_id=call_id, argument=3),        # count
            frame(CREDIT, call_id=call_id, argument=2 * MiB),
            frame(QUERY, [], call_id=call_id, argument=4),                         # total
            frame(ITEM, rng.randrange(1000), call_id=call_id),
            frame(END, call_id=call_id),
            frame(ABORT, call_id=call_id),
            frame(QUERY, [rng.randrange(100)], call_id=0, argument=5),             # note
        ]
    frames += [frame(HEARTBEAT), frame(CLOSE, "bye"), hello(os.urandom(32)),
               frame(AUTH, os.urandom(32))]
    return frames


def mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(rng.choice(corpus))
    how = rng.randrange(10)
    if how == 0:  # flip bytes
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif how == 1:  # length field
        length = rng.choice([0, 8, 9, len(data) - 5, len(data) - 3, len(data) + 7, 4096, 4097,
                             0xFFFFFFFF, rng.randrange(1 << 32), rng.randrange(1 << 17)])
        struct.pack_into("<I", data, 0, length % (1 << 32))
    elif how == 2:  # type
        data[4] = rng.choice([0, 13, 255, *range(1, 13)])
    elif how == 3:  # call id
        struct.pack_into("<I", data, 5, rng.choice([0, 1, 2, 0xFFFFFFFF, rng.randrange(1 << 32)]))
    elif how == 4:  # argument (function index, credit)
        struct.pack_into("<I", data, 9, rng.choice([0, 6, 7, 0xFFFFFFFF, rng.randrange(1 << 32)]))
    elif how == 5:  # truncate
        data = data[: rng.randrange(len(data))]
    elif how == 6:  # splice two frames
        other = rng.choice(corpus)
        cut = rng.randrange(len(data))
        data = data[:cut] + other[rng.randrange(len(other)):]
    elif how == 7:  # payload noise, header kept
        data = data[: HEADER.size] + os.urandom(max(0, len(data) - HEADER.size))
    elif how == 8:  # pure noise
        data = bytearray(os.urandom(rng.randrange(1, 64)))
    # how == 9: the valid frame as is (keeps connections alive, exercises the real paths)
    return bytes(data)


def drain(sock: socket.socket) -> bool:
    """Read what the server sent (so it never blocks on us); False when it has closed."""
    try:
        while True:
            chunk = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            if not chunk:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def start_server(directory: str) -> tuple[subprocess.Popen[bytes], str, bytes]:
    path = os.path.join(directory, "fuzz.sock")
    secret = os.urandom(32)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    server = subprocess.Popen([sys.executable, str(SERVER), "unix", path, "2"], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(secret.hex().encode() + b"\n")
    server.stdin.flush()
    json.loads(server.stdout.readline())
    return server, path, secret


async def server_status(path: str, secret: bytes) -> tuple[int, int]:
    connection = await connect_unix(path, secret=secret)
    try:
        assert await asyncio.wait_for(connection.call(HIT, 7), 10.0) == 7
        return await asyncio.wait_for(connection.call(STATUS), 10.0)
    finally:
        connection.close()
        await connection.wait_closed()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=900.0, help="time bound")
    parser.add_argument("--every", type=float, default=5.0, help="print interval (s)")
    parser.add_argument("--batch", type=int, default=64, help="frames per write")
    parser.add_argument("--per-session", type=int, default=20,
                        help="batches per connection before reconnecting")
    parser.add_argument("--preauth", type=float, default=0.1, help="share of unauthenticated sessions")
    parser.add_argument("--max-growth", type=float, default=20.0, help="MiB of RSS growth allowed")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    corpus = captured_frames(rng)
    directory = tempfile.mkdtemp(prefix="rpc-fuzz-")
    server, path, secret = start_server(directory)
    try:
        return fuzz(args, rng, corpus, server, path, secret, seed)
    finally:
        if server.stdin is not None:
            server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def fuzz(args: argparse.Namespace, rng: random.Random, corpus: list[bytes],
         server: subprocess.Popen[bytes], path: str, secret: bytes, seed: int) -> int:
    status = asyncio.run(server_status(path, secret))
    base_rss, base_fds = rss_bytes(server.pid), fd_count(server.pid)
    print(f"seed {seed}; server pid {server.pid}: RSS {base_rss / MiB:.1f} MiB, "
          f"{base_fds} fds, status {status}", flush=True)
    sent = sessions = batches = 0
    started = last = time.monotonic()
    sock: socket.socket | None = None
    while sent < args.frames and time.monotonic() - started < args.seconds:
        if server.poll() is not None:
            print(f"SERVER DIED with status {server.returncode} after {sent} frames")
            return 1
        if sock is None:
            sock = unix_socket(path)
            sessions += 1
            batches = 0
            if rng.random() >= args.preauth:
                raw_handshake(sock, secret)
            sock.setblocking(False)
        batch = b"".join(mutate(rng, corpus) for _ in range(args.batch))
        try:
            sock.setblocking(True)
            sock.settimeout(10.0)
            sock.sendall(batch)
            sock.setblocking(False)
            sent += args.batch
            batches += 1
            alive = drain(sock) and batches < args.per_session
        except OSError:
            alive = False
        if not alive:
            sock.close()
            sock = None
        now = time.monotonic()
        if now - last >= args.every:
            last = now
            print(f"{now - started:7.1f} s  {sent:>9,} frames  {sent / (now - started):>8,.0f} "
                  f"frames/s  {sessions:>7,} sessions  RSS {rss_bytes(server.pid) / MiB:6.1f} MiB"
                  f"  fds {fd_count(server.pid)}", flush=True)
    if sock is not None:
        sock.close()
    return verdict(args, server, path, secret, sent, started, base_rss, base_fds)


def verdict(args: argparse.Namespace, server: subprocess.Popen[bytes], path: str, secret: bytes,
            sent: int, started: float, base_rss: int, base_fds: int) -> int:
    took = time.monotonic() - started
    if server.poll() is not None:
        print(f"SERVER DIED with status {server.returncode}")
        return 1
    deadline = time.monotonic() + 15.0  # pending connections time out (handshake 2 s)
    while fd_count(server.pid) != base_fds and time.monotonic() < deadline:
        time.sleep(0.2)
    connections, tasks = asyncio.run(server_status(path, secret))
    rss, fds = rss_bytes(server.pid), fd_count(server.pid)
    grown = (rss - base_rss) / MiB
    print(f"{sent:,} frames in {took:.1f} s ({sent / took:,.0f} frames/s); server RSS "
          f"{base_rss / MiB:.1f} -> {rss / MiB:.1f} MiB, fds {base_fds} -> {fds}, "
          f"connections {connections}, tasks {tasks}")
    flat = fds == base_fds and grown < args.max_growth and server.poll() is None
    print("verdict:", "flat" if flat else "grew")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
