"""Our RPC layer against the raw-socket floor, side by side in one run.

The server of each contender runs in its own process (spawned here); the client runs in this
one, on uvloop. Contenders:

* ``floor``: a minimal ``asyncio.Protocol`` with length-prefixed msgspec frames (u32 length,
  u32 call id, msgpack payload), writes coalesced into a bytearray flushed with ``call_soon``
  on the client and once per ``data_received`` on the server, answered inline (no task);
* ``streams`` (bandwidth only): the same frames over uvloop streams (``readexactly``), the
  other cheap way to move large frames;
* ``ours``: ``rpc_parallel.rpc`` (handshake, authentication, typed codecs, call ids, tasks).

Measured for each, over TCP loopback and Unix sockets: sequential round-trip latency (median,
p99), the same with client and server pinned to one CPU (software cost only, no cross-CPU
wake-up), throughput with 256 calls in flight, and the bandwidth of 16 MiB echoes (payload
bytes both ways per second). Ratios are ours/floor; the bandwidth floor is the better of
``floor`` and ``streams``. Each measurement is repeated over a few rounds, alternating who
goes first; the table shows the median of the rounds.

    python benchmarks/rpc_floor.py            # about a minute
    python benchmarks/rpc_floor.py --quick    # a few seconds, numbers are rough
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import uvloop

# The RPC layer as a module (``import rpc_parallel.rpc as rpc`` would give ``rp.rpc``, the
# decorator: docs/decisions/0008).
rpc = importlib.import_module("rpc_parallel.rpc")

SECRET = b"rpc_floor benchmark secret"
ECHO_SIZE = 16 * 1024 * 1024
IN_FLIGHT = 256
TARGETS = {"latency": 1.2, "pinned_latency": 1.25, "throughput": 0.8, "bandwidth": 0.8}
"""ours/floor targets; latency and throughput are issue 13's (Unix sockets, same run)."""

# ---------------------------------------------------------------------------- the floor

FLOOR_HEADER = struct.Struct("<II")  # payload length, call id
FLOOR_HEADER_SIZE = FLOOR_HEADER.size
_FLOOR_ZERO = bytes(FLOOR_HEADER_SIZE)
FLOOR_ENCODER = msgspec.msgpack.Encoder()
FLOOR_DECODER: msgspec.msgpack.Decoder[int | bytes] = msgspec.msgpack.Decoder(int | bytes)


def _floor_answer(value: int | bytes) -> int | bytes:
    return value + 1 if type(value) is int else value


def _append_frame(out: bytearray, call_id: int, value: Any) -> None:
    start = len(out)
    out += _FLOOR_ZERO
    FLOOR_ENCODER.encode_into(value, out, -1)
    FLOOR_HEADER.pack_into(out, start, len(out) - start - FLOOR_HEADER_SIZE, call_id)


class _FloorFramer(asyncio.Protocol):
    """Splits ``data_received`` chunks into frames; keeps a partial frame in a bytearray."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        pending = self.pending
        source: bytes | bytearray
        if pending:
            pending += data
            source = pending
        else:
            source = data
        view = memoryview(source)
        position, size = 0, len(source)
        unpack = FLOOR_HEADER.unpack_from
        while size - position >= FLOOR_HEADER_SIZE:
            length, call_id = unpack(source, position)
            end = position + FLOOR_HEADER_SIZE + length
            if end > size:
                break
            self.frame(call_id, view[position + FLOOR_HEADER_SIZE : end])
            position = end
        view.release()
        if source is pending:
            del pending[:position]
        elif position < size:
            self.pending = bytearray(data[position:])
        self.end_of_chunk()

    def frame(self, call_id: int, payload: memoryview) -> None:
        raise NotImplementedError

    def end_of_chunk(self) -> None:
        pass


class FloorServer(_FloorFramer):
    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def frame(self, call_id: int, payload: memoryview) -> None:
        _append_frame(self.out, call_id, _floor_answer(FLOOR_DECODER.decode(payload)))

    def end_of_chunk(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(self.out)
            self.out = bytearray()


class FloorClient(_FloorFramer):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.get_running_loop()
        self.out = bytearray()
        self.flush_scheduled = False
        self.calls: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0

    def call(self, value: int | bytes) -> asyncio.Future[Any]:
        call_id = self.next_id = (self.next_id + 1) & 0xFFFF_FFFF
        _append_frame(self.out, call_id, value)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)
        future = self.loop.create_future()
        self.calls[call_id] = future
        return future

    def flush(self) -> None:
        self.flush_scheduled = False
        assert self.transport is not None
        self.transport.write(self.out)
        self.out = bytearray()

    def frame(self, call_id: int, payload: memoryview) -> None:
        self.calls.pop(call_id).set_result(FLOOR_DECODER.decode(payload))


async def _streams_serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            length, call_id = FLOOR_HEADER.unpack(await reader.readexactly(FLOOR_HEADER_SIZE))
            answer = _floor_answer(FLOOR_DECODER.decode(await reader.readexactly(length)))
            body = FLOOR_ENCODER.encode(answer)
            writer.writelines((FLOOR_HEADER.pack(len(body), call_id), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


class StreamsClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def echo(self, value: bytes) -> Any:
        body = FLOOR_ENCODER.encode(value)
        self.writer.writelines((FLOOR_HEADER.pack(len(body), 0), body))
        await self.writer.drain()
        length, _ = FLOOR_HEADER.unpack(await self.reader.readexactly(FLOOR_HEADER_SIZE))
        return FLOOR_DECODER.decode(await self.reader.readexactly(length))

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------- ours


async def add(x: int) -> int:
    return x + 1


async def echo(data: bytes) -> bytes:
    return data


ADD = rpc.FunctionSpec.from_callable(add, kind="rpc", name="add")
ECHO = rpc.FunctionSpec.from_callable(echo, kind="rpc", name="echo")
IMPLEMENTATIONS = [rpc.Implementation(ADD, add), rpc.Implementation(ECHO, echo)]

# ---------------------------------------------------------------------------- servers


async def _serve(kind: str, transport: str, address: str) -> None:
    loop = asyncio.get_running_loop()
    closers: list[Callable[[], Any]] = []
    port = 0
    if kind == "ours":
        if transport == "tcp":
            server = await rpc.serve_tcp(secret=SECRET, implementations=IMPLEMENTATIONS)
            assert isinstance(server.address, tuple)
            port = server.address[1]
        else:
            server = await rpc.serve_unix(address, secret=SECRET, implementations=IMPLEMENTATIONS)
        closers.append(server.close)
    else:
        raw: asyncio.AbstractServer
        if kind == "floor":
            if transport == "tcp":
                raw = await loop.create_server(FloorServer, "127.0.0.1", 0)
            else:
                raw = await loop.create_unix_server(FloorServer, address)
        elif transport == "tcp":
            raw = await asyncio.start_server(_streams_serve, "127.0.0.1", 0)
        else:
            raw = await asyncio.start_unix_server(_streams_serve, address)
        if transport == "tcp":
            port = raw.sockets[0].getsockname()[1]
        closers.append(raw.close)
    print(f"READY {port}", flush=True)
    # Serve until the benchmark closes our stdin (or is gone).
    parent = os.getppid()
    stdin_closed = loop.create_future()

    def on_stdin() -> None:
        if not stdin_closed.done():
            stdin_closed.set_result(None)

    loop.add_reader(0, on_stdin)
    while not stdin_closed.done() and os.getppid() == parent:
        await asyncio.wait([stdin_closed], timeout=0.5)
    loop.remove_reader(0)
    for close in closers:
        close()


@dataclass
class ServerProcess:
    kind: str
    transport: str
    process: subprocess.Popen[bytes]
    address: str
    port: int

    @classmethod
    def start(cls, kind: str, transport: str, directory: str) -> ServerProcess:
        address = os.path.join(directory, f"{kind}.sock")
        process = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--transport", transport,
             "--address", address],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("READY"):
            process.kill()
            raise RuntimeError(f"the {kind} server did not start: {line!r}")
        return cls(kind, transport, process, address, int(line.split()[1]))

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------- clients

Call = Callable[[Any], Awaitable[Any]]
StartCall = Callable[[Any], "asyncio.Future[Any]"]


@dataclass
class Client:
    call: Call  # awaitable round trip
    start: StartCall | None  # a future per call, no task (for many in flight)
    close: Callable[[], None]


async def connect(server: ServerProcess) -> Client:
    loop = asyncio.get_running_loop()
    if server.kind == "ours":
        if server.transport == "tcp":
            conn = await rpc.connect_tcp("127.0.0.1", server.port, secret=SECRET)
        else:
            conn = await rpc.connect_unix(server.address, secret=SECRET)

        # Only measure_throughput starts calls this way, always of ``add`` (as the floor's
        # ``call`` is its protocol's bound method, not a wrapper).
        start: StartCall = functools.partial(conn.call_future, ADD)

        async def call(value: Any) -> Any:
            return await conn.call(ECHO if type(value) is bytes else ADD, value)

        return Client(call, start, conn.close)
    if server.kind == "floor":
        if server.transport == "tcp":
            _, protocol = await loop.create_connection(FloorClient, "127.0.0.1", server.port)
        else:
            _, protocol = await loop.create_unix_connection(FloorClient, server.address)

        async def floor_call(value: Any) -> Any:
            return await protocol.call(value)

        def close() -> None:
            assert protocol.transport is not None
            protocol.transport.close()

        return Client(floor_call, protocol.call, close)
    if server.transport == "tcp":
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    else:
        reader, writer = await asyncio.open_unix_connection(server.address)
    streams = StreamsClient(reader, writer)
    return Client(streams.echo, None, streams.close)


# ---------------------------------------------------------------------------- measurements


@dataclass
class Plan:
    rounds: int
    latency_calls: int
    pinned_calls: int
    throughput_seconds: float
    bandwidth_seconds: float
    min_echoes: int


FULL = Plan(rounds=3, latency_calls=8000, pinned_calls=8000, throughput_seconds=0.8,
            bandwidth_seconds=0.8, min_echoes=4)
QUICK = Plan(rounds=1, latency_calls=1000, pinned_calls=1000, throughput_seconds=0.2,
             bandwidth_seconds=0.2, min_echoes=2)


async def measure_latency(client: Client, calls: int) -> tuple[float, float]:
    """Median and p99 of sequential round trips, in microseconds."""
    for i in range(min(500, calls)):
        await client.call(i)
    clock = time.perf_counter_ns
    samples = []
    for i in range(calls):
        started = clock()
        await client.call(i)
        samples.append(clock() - started)
    samples.sort()
    return samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3


async def keep_in_flight(start: StartCall, seconds: float) -> tuple[int, float]:
    """IN_FLIGHT calls outstanding for ``seconds`` (a new one started as each finishes,
    then the last ones awaited): how many completed, and the seconds it took."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    state = {"completed": 0, "outstanding": IN_FLIGHT, "issuing": True}

    def on_done(future: asyncio.Future[Any]) -> None:
        future.result()
        state["completed"] += 1
        if state["issuing"]:
            start(1).add_done_callback(on_done)
        else:
            state["outstanding"] -= 1
            if state["outstanding"] == 0 and not finished.done():
                finished.set_result(None)

    began = time.perf_counter()
    for i in range(IN_FLIGHT):
        start(i).add_done_callback(on_done)
    await asyncio.sleep(seconds)
    state["issuing"] = False
    await finished
    return state["completed"], time.perf_counter() - began


async def measure_throughput(client: Client, seconds: float) -> float:
    """Calls per second with IN_FLIGHT calls outstanding at all times."""
    assert client.start is not None
    await keep_in_flight(client.start, min(0.1, seconds))  # warm-up
    completed, elapsed = await keep_in_flight(client.start, seconds)
    return completed / elapsed


async def measure_bandwidth(client: Client, seconds: float, min_echoes: int) -> float:
    """GB/s of payload moved (out and back) by sequential 16 MiB echoes."""
    payload = os.urandom(ECHO_SIZE)
    result = await client.call(payload)  # warm-up, and a correctness check
    if len(result) != ECHO_SIZE or result[:64] != payload[:64]:
        raise AssertionError("echo returned something else")
    count = 0
    began = time.perf_counter()
    while count < min_echoes or time.perf_counter() - began < seconds:
        await client.call(payload)
        count += 1
    return 2 * count * ECHO_SIZE / (time.perf_counter() - began) / 1e9


class Pinned:
    """Pin this process and a server to one CPU for the duration."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.saved = os.sched_getaffinity(0)
        self.saved_server = os.sched_getaffinity(pid)

    def __enter__(self) -> int:
        cpu = max(self.saved)
        os.sched_setaffinity(0, {cpu})
        os.sched_setaffinity(self.pid, {cpu})
        return cpu

    def __exit__(self, *exc_info: object) -> None:
        os.sched_setaffinity(0, self.saved)
        os.sched_setaffinity(self.pid, self.saved_server)


@dataclass
class Samples:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.values.setdefault(name, []).append(value)

    def median(self, name: str) -> float | None:
        values = self.values.get(name)
        return statistics.median(values) if values else None


async def measure_round(
    servers: dict[str, ServerProcess], plan: Plan, order: list[str], results: dict[str, Samples]
) -> None:
    for kind in order:
        server = servers[kind]
        client = await connect(server)
        samples = results[kind]
        try:
            if kind != "streams":
                median, p99 = await measure_latency(client, plan.latency_calls)
                samples.add("latency_us", median)
                samples.add("latency_p99_us", p99)
                with Pinned(server.process.pid):
                    median, p99 = await measure_latency(client, plan.pinned_calls)
                samples.add("pinned_latency_us", median)
                samples.add("pinned_latency_p99_us", p99)
                samples.add("throughput_calls_s",
                            await measure_throughput(client, plan.throughput_seconds))
            samples.add("bandwidth_gb_s",
                        await measure_bandwidth(client, plan.bandwidth_seconds, plan.min_echoes))
        finally:
            client.close()
            await asyncio.sleep(0.05)


METRICS = [
    # name, label, unit, ratio key, lower is better
    ("latency_us", "latency median", "us", "latency", True),
    ("latency_p99_us", "latency p99", "us", None, True),
    ("pinned_latency_us", "pinned latency median", "us", "pinned_latency", True),
    ("pinned_latency_p99_us", "pinned latency p99", "us", None, True),
    ("throughput_calls_s", f"throughput ({IN_FLIGHT} in flight)", "calls/s", "throughput", False),
    ("bandwidth_gb_s", "16 MiB echo bandwidth", "GB/s", "bandwidth", False),
]


def summarize(transport: str, results: dict[str, Samples]) -> dict[str, Any]:
    summary: dict[str, Any] = {"transport": transport, "metrics": {}, "ratios": {}}
    for name, _, unit, ratio_key, lower_better in METRICS:
        floor = results["floor"].median(name)
        ours = results["ours"].median(name)
        streams = results["streams"].median(name)
        reference = floor
        if name == "bandwidth_gb_s" and streams is not None and floor is not None:
            reference = max(floor, streams)
        summary["metrics"][name] = {
            "unit": unit, "floor": floor, "streams": streams, "ours": ours,
            "reference": reference,
            "rounds": {k: v.values.get(name, []) for k, v in results.items()},
        }
        if ratio_key is not None and reference and ours is not None:
            ratio = ours / reference
            target = TARGETS[ratio_key]
            summary["ratios"][ratio_key] = {
                "ratio": ratio, "target": target,
                "met": ratio <= target if lower_better else ratio >= target,
                "target_text": f"<= {target}x" if lower_better else f">= {target}x",
            }
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print(f"\n== {summary['transport']} ==")
    print(f"{'metric':<30}{'floor':>12}{'streams':>12}{'ours':>12}{'ours/floor':>12}"
          f"{'target':>10}{'':>6}")
    keys = {m[0]: m for m in METRICS}
    for name, entry in summary["metrics"].items():
        _, label, unit, ratio_key, _ = keys[name]

        def fmt(value: float | None, unit: str = unit) -> str:
            if value is None:
                return "-"
            return f"{value:,.0f}" if unit == "calls/s" else f"{value:.2f}"

        ratio_text = target_text = met = ""
        if ratio_key in summary["ratios"]:
            r = summary["ratios"][ratio_key]
            ratio_text = f"{r['ratio']:.2f}x"
            target_text = r["target_text"]
            met = "ok" if r["met"] else "MISS"
        print(f"{label + ' (' + unit + ')':<30}{fmt(entry['floor']):>12}{fmt(entry['streams']):>12}"
              f"{fmt(entry['ours']):>12}{ratio_text:>12}{target_text:>10}{met:>6}")


def print_issue_13(summaries: list[dict[str, Any]]) -> None:
    """Issue 13's two call ratios, from this run's Unix-socket rounds."""
    for summary in summaries:
        if summary["transport"] != "unix":
            continue
        ratios = summary["ratios"]
        for key, label in (("throughput", f"throughput, {IN_FLIGHT} in flight"),
                           ("latency", "sequential latency")):
            if key in ratios:
                r = ratios[key]
                print(f"issue 13, Unix sockets: {label}: {r['ratio']:.2f}x the floor "
                      f"(target {r['target_text']}) {'ok' if r['met'] else 'MISS'}")


async def benchmark(transports: list[str], plan: Plan) -> list[dict[str, Any]]:
    summaries = []
    with tempfile.TemporaryDirectory(prefix="rpc_floor.") as directory:
        for transport in transports:
            servers = {k: ServerProcess.start(k, transport, directory)
                       for k in ("floor", "streams", "ours")}
            try:
                results = {k: Samples() for k in servers}
                for round_number in range(plan.rounds):
                    order = ["floor", "streams", "ours"]
                    if round_number % 2:
                        order.reverse()
                    await measure_round(servers, plan, order, results)
            finally:
                for server in servers.values():
                    server.stop()
            summary = summarize(transport, results)
            print_table(summary)
            summaries.append(summary)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run (rough numbers)")
    parser.add_argument("--transport", choices=["tcp", "unix", "both"], default="both")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--json", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "rpc_floor.json")
    parser.add_argument("--serve", choices=["floor", "streams", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(_serve(args.serve, args.transport, args.address))
        return
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**plan.__dict__, "rounds": args.rounds})
    transports = ["tcp", "unix"] if args.transport == "both" else [args.transport]
    began = time.perf_counter()
    summaries = uvloop.run(benchmark(transports, plan))
    elapsed = time.perf_counter() - began
    print(f"\nbandwidth counts payload bytes out and back; its reference is the better of floor "
          f"and streams.\n{plan.rounds} round(s), medians shown; {elapsed:.0f} s in all.")
    print_issue_13(summaries)
    report = {
        "benchmark": "rpc_floor",
        "quick": args.quick,
        "plan": plan.__dict__,
        "machine": {
            "cpus": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(), "platform": platform.platform(),
            "uvloop": getattr(uvloop, "__version__", "?"), "msgspec": msgspec.__version__,
        },
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": elapsed,
        "results": summaries,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")


if __name__ == "__main__":
    main()
