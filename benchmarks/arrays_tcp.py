"""A numpy array echoed over loopback TCP and TLS (the path to another host): the RPC layer
beside the floor of the same bytes echoed through a plain socket, in one run, rounds
interleaved.

    python benchmarks/arrays_tcp.py [--quick] [--mib N]

The server side runs in a child process: an RPC server whose function returns its array
argument, and a socket server that sends back the bytes it reads (into a buffer allocated
once: only the kernel's copies). Each round sends the array and gets it back; the rate is
2 x the array size / round-trip time (10^9 bytes per GB). The client's CPU time per round
(this process: encoding, copies, reads) is reported too: load on a shared machine moves it
less than the wall clock.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import ssl
import statistics
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rpc_parallel.rpc import (
    FunctionSpec,
    Implementation,
    TlsIdentity,
    client_context,
    connect_tcp,
    run,
    serve_tcp,
    server_context,
)

MIB = 1 << 20
SECRET = b"arrays_tcp benchmark"


async def echo(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return a


ECHO = FunctionSpec.from_callable(echo, kind="rpc")


def _raw_echo(listener: socket.socket, context: ssl.SSLContext | None) -> None:
    """Accept one connection; read 8-byte lengths and echo that many bytes, until EOF."""
    conn, _ = listener.accept()
    sock = context.wrap_socket(conn, server_side=True) if context is not None else conn
    buffer, header = bytearray(), bytearray(8)
    with sock:
        while _read_into(sock, memoryview(header)):
            size = int.from_bytes(header, "little")
            if len(buffer) < size:
                buffer = bytearray(size)
            view = memoryview(buffer)[:size]
            if not _read_into(sock, view):
                return
            sock.sendall(view)


def _read_into(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view`` from ``sock``; False at the end of the stream."""
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:])
        if not count:
            return False
        got += count
    return True


def serve(ready: Any, pem: tuple[str, str]) -> None:
    """The child process: the RPC servers (TCP, TLS) and the socket servers (TCP, TLS)."""
    identity = TlsIdentity(*pem)
    ports: dict[str, int] = {}
    for name, context in (("raw", None), ("raw_tls", server_context(identity))):
        listener = socket.create_server(("127.0.0.1", 0))
        ports[name] = listener.getsockname()[1]
        threading.Thread(target=_raw_echo, args=(listener, context), daemon=True).start()

    async def main() -> None:
        implementations = [Implementation(ECHO, echo)]
        plain = await serve_tcp(secret=SECRET, implementations=implementations)
        secure = await serve_tcp(secret=SECRET, implementations=implementations,
                                 ssl=server_context(identity))
        ports["rpc"], ports["rpc_tls"] = plain.address[1], secure.address[1]  # type: ignore[misc]
        ready.put(ports)
        await asyncio.Event().wait()

    run(main())


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def raw_client(port: int, context: ssl.SSLContext | None,
                     array: npt.NDArray[np.float64]) -> Callable[[], Awaitable[Any]]:
    sock = socket.create_connection(("127.0.0.1", port))
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname=None)
    back = np.empty_like(array)
    data, into = memoryview(array).cast("B"), memoryview(back).cast("B")

    async def round_trip() -> Any:  # blocking on purpose: the floor has no event loop
        sock.sendall(array.nbytes.to_bytes(8, "little"))
        sock.sendall(data)
        got = 0
        while got < len(into):
            got += sock.recv_into(into[got:])
        return back

    return round_trip


async def measure(mib: int, rounds: int, ports: dict[str, int],
                  identity: TlsIdentity) -> dict[str, Any]:
    array = np.random.default_rng(1).random(mib * MIB // 8)
    tls_client = client_context(identity)
    plain = await connect_tcp("127.0.0.1", ports["rpc"], secret=SECRET)
    secure = await connect_tcp("127.0.0.1", ports["rpc_tls"], secret=SECRET, ssl=tls_client)
    contenders: dict[str, Callable[[], Awaitable[Any]]] = {
        "rpc TCP": lambda: plain.call(ECHO, array),
        "socket TCP": await raw_client(ports["raw"], None, array),
        "rpc TLS": lambda: secure.call(ECHO, array),
        "socket TLS": await raw_client(ports["raw_tls"], tls_client, array),
    }
    for name, echo_once in contenders.items():  # warm-up, and a check of the result
        if not np.array_equal(await echo_once(), array):
            raise RuntimeError(f"{name} returned a different array")
    times: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    for index in range(rounds):
        order = list(contenders) if index % 2 == 0 else list(contenders)[::-1]
        for name in order:
            began_cpu, began = cpu(), time.perf_counter()
            await contenders[name]()
            times[name].append(time.perf_counter() - began)
            cpus[name].append(cpu() - began_cpu)
    plain.close()
    secure.close()
    figures = {name: {"round_trip_s": statistics.median(times[name]),
                      "gb_per_s": 2 * array.nbytes / statistics.median(times[name]) / 1e9,
                      "client_cpu_s": statistics.median(cpus[name])} for name in contenders}
    ratios = {f"{kind}: rpc rate / socket rate": figures[f"rpc {kind}"]["gb_per_s"]
              / figures[f"socket {kind}"]["gb_per_s"] for kind in ("TCP", "TLS")}
    return {"array_mib": mib, "rounds": rounds, "figures": figures, "ratios": ratios}


def main(argv: list[str] | None = None, *, output: Path | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="an 8 MiB array, 2 rounds")
    parser.add_argument("--mib", type=int, default=64, help="array size (default 64 MiB)")
    parser.add_argument("--out", type=Path, help="where to write the results (JSON)")
    arguments = parser.parse_args(argv)
    mib, rounds = (8, 2) if arguments.quick else (arguments.mib, 7)
    identity = TlsIdentity.generate()
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Queue()
    server = spawn.Process(target=serve, args=(ready, (identity.certificate, identity.key)),
                           daemon=True)
    server.start()
    try:
        ports = ready.get(timeout=60)
        results = run(measure(mib, rounds, ports, identity))
    finally:
        server.terminate()
        server.join(10)
    print(f"\n{mib} MiB float64 array echoed over loopback, median of {rounds} rounds "
          "(interleaved)")
    for name, figure in results["figures"].items():
        print(f"  {name:12s} {figure['round_trip_s'] * 1000:8.1f} ms  {figure['gb_per_s']:6.2f} "
              f"GB/s  client CPU {figure['client_cpu_s'] * 1000:7.1f} ms")
    print("\nratios (same run)")
    for key, value in results["ratios"].items():
        print(f"  {key:36s} {value:6.2f}")
    target = (output or arguments.out
              or Path(__file__).resolve().parent / "results" / "arrays_tcp.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    sys.exit(main() and 0)
