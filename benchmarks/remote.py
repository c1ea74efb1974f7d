"""Workers on another host, side by side with their baselines, in one run (issue 9, item 7).

    .venv/bin/python benchmarks/remote.py [--quick] [--link-only]

Needs root (it makes the test harness's namespace host: a network namespace with its own
sshd, joined by a veth pair; traffic never leaves the machine). Measures:

* **spawn**: a remote spawn to its first result — from a bundle already on the host
  (``rp.RemoteExecutable``, the host's python a bare venv), and from the master's own files —
  against ``ssh host true`` plus a local spawn to its first result (the ssh config's
  ControlMaster warm, no pre-started process);
* **the link**, on the namespace link, with the same RPC-layer echo server run inside the
  namespace: over TLS (ours: the RPC layer's TLS transport), over TLS in the event loop's
  own layer (``create_connection(ssl=)``, as before the RPC layer had its own: the "before"
  figures), over plain TCP, and over plain TCP through an ``ssh -L`` port forward — and
  through a spawned remote worker's link (the whole stack). All links are open at once and
  measured in interleaved rounds (each round of each link sees the same load on a shared
  machine): sequential latency (median call), throughput with 256 calls in flight (median
  round), and the bandwidth of 16 MiB echoes (payload bytes both ways per second, median
  echo); ``--link-only`` measures only these;
* **execnet**'s ssh gateway (when installed) as the peer: gateway start to first result,
  channel echo latency, 16 MiB echo bandwidth.

Prints a table and the ratios against the issue's targets; writes
benchmarks/results/remote.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

import remote_specs  # noqa: E402

import rpc_parallel as rp  # noqa: E402
from rpc_parallel.rpc import Connection, TlsIdentity, client_context, connect_tcp  # noqa: E402
from rpc_parallel.rpc import run as rpc_run  # noqa: E402

SIXTEEN_MIB = 16 * 1024 * 1024
IN_FLIGHT = 256
SECRET = os.urandom(32)
TARGETS = {
    "spawn / (ssh true + local spawn)": ("<=", 1.5),
    "TLS / TCP bandwidth": (">=", 0.5),
    "TLS / ssh -L bandwidth": (">=", 2.0),
    "TLS / TCP latency": ("<=", 1.3),
}


class Echo(rp.Worker[None]):
    @rp.rpc
    async def add(self, x: int) -> int:
        return x + 1

    @rp.rpc
    async def echo(self, data: bytes) -> bytes:
        return data


# ---------------------------------------------------------------------------- measuring


async def timed(make: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await make()
    return time.perf_counter() - started


Add = Callable[[int], Awaitable[int]]
Echo16 = Callable[[bytes], Awaitable[bytes]]
Link = tuple[Add, Echo16, list[int]]
"""A link's ``add`` and ``echo``, and the processes that do its work (their CPU is counted)."""


def cpu_seconds(pids: list[int]) -> float:
    """CPU time the processes ``pids`` (every thread) have run, from /proc (nanoseconds)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/schedstat") as file:
                    total += int(file.read().split()[0])
    return total / 1e9


async def link_figures(links: dict[str, Link], quick: bool) -> dict[str, dict[str, float]]:
    """For every link, side by side in interleaved rounds (the machine is shared: each
    round of each link sees the same load): latency (s, median of sequential calls),
    throughput (calls/s with 256 in flight, median round), bandwidth (payload bytes both
    ways per second, median 16 MiB echo) and the CPU an echo costs (s, every process of
    the link together, mean): unlike the others, that one hardly depends on the load."""
    payload = os.urandom(SIXTEEN_MIB)
    for add, echo, _ in links.values():
        for i in range(20):
            await add(i)
        await echo(payload)
    latencies: dict[str, list[float]] = {name: [] for name in links}
    throughputs: dict[str, list[float]] = {name: [] for name in links}
    bandwidths: dict[str, list[float]] = {name: [] for name in links}
    cpus: dict[str, list[float]] = {name: [] for name in links}
    clock = time.perf_counter
    for _ in range(4 if quick else 20):
        for name, (add, _, _) in links.items():
            for _ in range(50):
                started = clock()
                await add(1)
                latencies[name].append(clock() - started)
            started = clock()
            await asyncio.gather(*(add(i) for i in range(IN_FLIGHT)))
            throughputs[name].append(IN_FLIGHT / (clock() - started))
    for _ in range(3 if quick else 15):
        for name, (_, echo, pids) in links.items():
            used = cpu_seconds(pids)
            started = clock()
            await echo(payload)
            bandwidths[name].append(2 * SIXTEEN_MIB / (clock() - started))
            cpus[name].append(cpu_seconds(pids) - used)
    return {name: {"latency_s": statistics.median(latencies[name]),
                   "throughput_per_s": statistics.median(throughputs[name]),
                   "bandwidth_bytes_per_s": statistics.median(bandwidths[name]),
                   "cpu_per_echo_s": statistics.mean(cpus[name])}
            for name in links}


def connection_link(connection: Connection, pids: list[int]) -> Link:
    async def add(x: int) -> int:
        result: int = await connection.call(remote_specs.ADD, x)
        return result

    async def echo(data: bytes) -> bytes:
        result: bytes = await connection.call(remote_specs.ECHO, data)
        assert len(result) == len(data)
        return result

    return add, echo, pids


# ---------------------------------------------------------------------------- the servers


@contextlib.asynccontextmanager
async def server_in_namespace(ns: Any, identity: TlsIdentity, listeners: list[tuple[str, str]]
                              ) -> AsyncIterator[tuple[list[int], int]]:
    """The echo server inside the namespace, one process with one listener per
    ``(host, kind)`` (kind: ``tls``, ``loop_tls`` or ``tcp``); yields their ports and its
    pid."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(HERE)])}
    # A session of its own, as a process on another host would be: with the kernel's
    # autogroup scheduling, a child in our session would share our CPU share.
    process = await asyncio.create_subprocess_exec(
        *ns.exec_argv([sys.executable, str(HERE / "remote_server.py")]), env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True)
    assert process.stdin is not None and process.stdout is not None
    order = {"secret": SECRET.hex(), "certificate": identity.certificate.decode(),
             "key": identity.key.decode(), "listeners": listeners}
    process.stdin.write(json.dumps(order).encode() + b"\n")
    try:
        ports: list[int] = json.loads(await asyncio.wait_for(process.stdout.readline(), 30))
        yield ports, process.pid  # (ip netns exec runs the server in its own process)
    finally:
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def port_forward(ssh_host: Any, remote_port: int) -> AsyncIterator[tuple[int, int]]:
    """``ssh -N -L`` on its own connection (no ControlMaster); yields the local port and
    the ssh client's pid."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        local_port = probe.getsockname()[1]
    process = await asyncio.create_subprocess_exec(
        "ssh", *ssh_host.ssh_options, "-o", "ControlMaster=no", "-o", "ControlPath=none",
        "-o", "ExitOnForwardFailure=yes", "-N",
        "-L", f"127.0.0.1:{local_port}:127.0.0.1:{remote_port}", ssh_host.alias)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", local_port)
                writer.close()
                break
            except OSError:
                if time.monotonic() > deadline or process.returncode is not None:
                    raise RuntimeError("the ssh port forward did not come up") from None
                await asyncio.sleep(0.05)
        yield local_port, process.pid
    finally:
        process.terminate()
        await process.wait()


async def connect_with_loop_tls(host: str, port: int, identity: TlsIdentity) -> Connection:
    """A connection with TLS in the event loop's own layer (``create_connection(ssl=)``),
    as the RPC layer did before it had its own TLS transport: the "before" figures."""
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: Connection(secret=SECRET, is_client=True), host, port,
        ssl=client_context(identity), server_hostname=host)
    await connection.wait_ready()
    return connection


async def links(ns: Any, quick: bool) -> dict[str, dict[str, float]]:
    identity = TlsIdentity.generate()
    how = rp.Remote(ns.ssh_host.alias, ssh_options=ns.ssh_host.ssh_options)
    async with contextlib.AsyncExitStack() as stack:
        enter = stack.enter_async_context
        (tls_port, loop_tls_port, tcp_port, forwarded_port), server = await enter(
            server_in_namespace(ns, identity, [(ns.address, "tls"), (ns.address, "loop_tls"),
                                               (ns.address, "tcp"), ("127.0.0.1", "tcp")]))
        sshd = [pid for pid in ns.pids() if pid != server]  # the namespace's sshd
        local_port, ssh = await enter(port_forward(ns.ssh_host, forwarded_port))
        connections = {
            "TLS (ours)": await connect_tcp(ns.address, tls_port, secret=SECRET,
                                            ssl=client_context(identity)),
            "TLS (event loop's)": await connect_with_loop_tls(ns.address, loop_tls_port,
                                                              identity),
            "plain TCP": await connect_tcp(ns.address, tcp_port, secret=SECRET),
            "ssh -L forward": await connect_tcp("127.0.0.1", local_port, secret=SECRET),
        }
        for connection in connections.values():
            stack.callback(connection.close)
        # The forward's sshd session: what runs in the namespace now that did not before.
        session = [pid for pid in ns.pids() if pid != server and pid not in sshd]
        worker = await enter(await Echo.spawn(None, how=how))
        me = os.getpid()
        measured = {name: connection_link(c, [me, server]) for name, c in connections.items()}
        measured["ssh -L forward"] = connection_link(connections["ssh -L forward"],
                                                     [me, server, ssh, *session])
        measured["remote worker link (TLS)"] = (lambda x: worker.run(Echo.add, x),
                                                lambda d: worker.run(Echo.echo, d),
                                                [me, worker.pid])
        return await link_figures(measured, quick)


# ---------------------------------------------------------------------------- spawning


async def spawns(ns: Any, quick: bool) -> dict[str, float]:
    ssh_host = ns.ssh_host
    how = rp.Remote(ssh_host.alias, ssh_options=ssh_host.ssh_options)

    async def ssh_true() -> None:
        process = await asyncio.create_subprocess_exec(*ssh_host.ssh_argv("true"))
        assert await process.wait() == 0

    async def spawn_and_call(launcher: rp.Local | rp.Remote) -> None:
        async with await Echo.spawn(None, how=launcher) as worker:
            assert await worker.run(Echo.add, 1) == 2

    from tests.harness.bare_python import BarePython

    with BarePython.create() as bare, tempfile.TemporaryDirectory(prefix="rp-bench-") as where:
        exe = await rp.RemoteExecutable.copy_to_host(
            ssh_host.alias, where, ssh_options=ssh_host.ssh_options, python=str(bare.python))
        shipped = rp.Remote(ssh_host.alias, ssh_options=ssh_host.ssh_options, executable=exe)
        await ssh_true()  # the ControlMaster is up
        await spawn_and_call(how)  # the master's TLS server and keys are made
        rounds = 3 if quick else 7
        figures: dict[str, list[float]] = {
            "ssh true": [], "local spawn": [], "remote spawn": [], "remote spawn (bundle)": []}
        for _ in range(rounds):
            figures["ssh true"].append(await timed(ssh_true))
            figures["local spawn"].append(await timed(lambda: spawn_and_call(rp.Local())))
            figures["remote spawn"].append(await timed(lambda: spawn_and_call(how)))
            figures["remote spawn (bundle)"].append(
                await timed(lambda: spawn_and_call(shipped)))
        await exe.delete()
    return {name: statistics.median(values) for name, values in figures.items()}


# ---------------------------------------------------------------------------- execnet


def execnet_figures(ns: Any, quick: bool) -> dict[str, float] | str:
    try:
        import execnet  # type: ignore[import-untyped]
    except ImportError:
        return "execnet is not installed (pip install execnet)"
    ssh_host = ns.ssh_host
    spec = f"ssh=-F {ssh_host.config} {ssh_host.alias}//python={sys.executable}"
    started = time.perf_counter()
    gateway = execnet.makegateway(spec)
    channel = gateway.remote_exec("for item in channel:\n    channel.send(item)\n")
    channel.send(1)
    assert channel.receive() == 1
    spawn = time.perf_counter() - started
    try:
        latencies = []
        for i in range(200 if quick else 1000):
            started = time.perf_counter()
            channel.send(i)
            channel.receive()
            latencies.append(time.perf_counter() - started)
        payload = os.urandom(SIXTEEN_MIB)
        echoes = 2 if quick else 6
        started = time.perf_counter()
        for _ in range(echoes):
            channel.send(payload)
            assert len(channel.receive()) == SIXTEEN_MIB
        bandwidth = 2 * echoes * SIXTEEN_MIB / (time.perf_counter() - started)
    finally:
        channel.close()
        gateway.exit()
    return {"spawn_s": spawn, "latency_s": statistics.median(latencies),
            "bandwidth_bytes_per_s": bandwidth}


# ---------------------------------------------------------------------------- report


def ratios(spawn: dict[str, float] | None, link: dict[str, dict[str, float]]
           ) -> dict[str, float]:
    tls, tcp, forward = link["TLS (ours)"], link["plain TCP"], link["ssh -L forward"]
    before = link["TLS (event loop's)"]
    figures: dict[str, float] = {}
    if spawn is not None:
        local = spawn["ssh true"] + spawn["local spawn"]
        figures["spawn / (ssh true + local spawn)"] = spawn["remote spawn (bundle)"] / local
        figures["spawn, shared files / (ssh true + local spawn)"] = spawn["remote spawn"] / local
    return figures | {
        "TLS / TCP bandwidth": tls["bandwidth_bytes_per_s"] / tcp["bandwidth_bytes_per_s"],
        "TLS / ssh -L bandwidth":
            tls["bandwidth_bytes_per_s"] / forward["bandwidth_bytes_per_s"],
        "TLS / TCP latency": tls["latency_s"] / tcp["latency_s"],
        "TLS / TCP throughput": tls["throughput_per_s"] / tcp["throughput_per_s"],
        "event loop's TLS / TCP bandwidth (before)":
            before["bandwidth_bytes_per_s"] / tcp["bandwidth_bytes_per_s"],
        "event loop's TLS / ssh -L bandwidth (before)":
            before["bandwidth_bytes_per_s"] / forward["bandwidth_bytes_per_s"],
        "TLS / event loop's TLS bandwidth":
            tls["bandwidth_bytes_per_s"] / before["bandwidth_bytes_per_s"],
        "TCP / TLS CPU per echo": tcp["cpu_per_echo_s"] / tls["cpu_per_echo_s"],
        "TCP / event loop's TLS CPU per echo (before)":
            tcp["cpu_per_echo_s"] / before["cpu_per_echo_s"],
        "ssh -L / TLS CPU per echo": forward["cpu_per_echo_s"] / tls["cpu_per_echo_s"],
    }


def report(results: dict[str, Any]) -> None:
    spawn = results["spawn"]
    if spawn is not None:
        print("\nspawn to first result (median):")
        for name, seconds in spawn.items():
            print(f"  {name:<28} {seconds * 1000:8.1f} ms")
    print("\non the namespace link:")
    print(f"  {'':<28} {'latency':>10} {'calls/s (256)':>14} {'16 MiB echo':>12} "
          f"{'CPU/echo':>10}")
    for name, figures in results["link"].items():
        print(f"  {name:<28} {figures['latency_s'] * 1e6:8.0f} us "
              f"{figures['throughput_per_s']:14.0f} "
              f"{figures['bandwidth_bytes_per_s'] / 1e6:8.0f} MB/s "
              f"{figures['cpu_per_echo_s'] * 1000:7.1f} ms")
    execnet = results["execnet"]
    if execnet is None:
        pass
    elif isinstance(execnet, str):
        print(f"\nexecnet: {execnet}")
    else:
        print(f"\nexecnet ssh gateway: start to first result {execnet['spawn_s'] * 1000:.0f} ms, "
              f"latency {execnet['latency_s'] * 1e6:.0f} us, "
              f"16 MiB echo {execnet['bandwidth_bytes_per_s'] / 1e6:.0f} MB/s")
    print("\nratios:")
    for name, value in results["ratios"].items():
        target = TARGETS.get(name)
        verdict = ""
        if target is not None:
            sign, bound = target
            met = value <= bound if sign == "<=" else value >= bound
            verdict = f"(target {sign} {bound}: {'met' if met else 'NOT met'})"
        print(f"  {name:<46} {value:6.2f} {verdict}")


async def run(ns: Any, quick: bool, link_only: bool) -> dict[str, Any]:
    spawn = None if link_only else await spawns(ns, quick)
    link = await links(ns, quick)
    await rp.expert.shutdown_master()
    return {"spawn": spawn, "link": link, "ratios": ratios(spawn, link)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds, rough numbers")
    parser.add_argument("--link-only", action="store_true",
                        help="only the link figures (no spawns, no execnet)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "remote.json",
                        help="where the results go (default: benchmarks/results/remote.json)")
    options = parser.parse_args()
    quick, link_only = options.quick, options.link_only
    from tests.harness.netns import NamespaceHost

    with NamespaceHost() as ns:
        results = rpc_run(run(ns, quick, link_only))
        results["execnet"] = None if link_only else execnet_figures(ns, quick)
    results["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                          "quick": quick, "link_only": link_only}
    report(results)
    out: Path = options.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
