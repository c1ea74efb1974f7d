"""The harness itself: each daemon works, and after teardown nothing it made is left."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import _proc
from .bare_python import BarePython
from .netns import NamespaceHost
from .slurm import SlurmCluster
from .sshd import Sshd, SshHost

_PROBE = """\
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except TimeoutError:
    print("timeout")
except OSError as error:
    print(f"error {error}")
"""


def _probe_from_namespace(host: NamespaceHost, address: str, port: int, timeout: float) -> str:
    """Connect from inside the namespace: "connected", "timeout" or "error ..."."""
    result = host.run([sys.executable, "-c", _PROBE, address, str(port), str(timeout)],
                      timeout=timeout + 20)
    return result.stdout.strip()


@pytest.fixture
def listener(namespace_host: NamespaceHost) -> Iterator[socket.socket]:
    """A TCP listener on our side of the veth (where the namespace can reach us)."""
    with socket.socket() as server:
        server.bind((namespace_host.host_address, 0))
        server.listen(16)
        yield server


# ---------------------------------------------------------------------- each daemon works


def test_loopback_sshd_runs_commands(loopback_sshd: SshHost) -> None:
    assert loopback_sshd.ssh("true").returncode == 0
    assert loopback_sshd.ssh(["echo", "two words"]).stdout == "two words\n"
    assert loopback_sshd.ssh_options == ["-F", str(loopback_sshd.config)]
    plain = subprocess.run(["ssh", *loopback_sshd.ssh_options, loopback_sshd.alias, "exit 3"],
                           capture_output=True, timeout=30, check=False)
    assert plain.returncode == 3


def test_namespace_host_answers_with_its_own_hostname(namespace_host: NamespaceHost) -> None:
    reported = namespace_host.ssh_host.ssh("hostname").stdout.strip()
    assert reported == namespace_host.hostname
    assert reported != socket.gethostname()
    assert namespace_host.ssh_host.address == namespace_host.address


def test_partition_cuts_the_link_and_heal_restores_it(
    namespace_host: NamespaceHost, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    address = namespace_host.host_address
    assert _probe_from_namespace(namespace_host, address, port, 5) == "connected"
    namespace_host.ssh_host.ssh("true")  # an ssh master is up across the partition
    namespace_host.partition()
    assert namespace_host.partitioned
    assert _probe_from_namespace(namespace_host, address, port, 2) == "timeout"
    assert not _proc.tcp_open(namespace_host.address, 22, timeout=1)  # both directions
    namespace_host.heal()
    assert not namespace_host.partitioned
    assert _probe_from_namespace(namespace_host, address, port, 5) == "connected"
    assert namespace_host.ssh_host.ssh("hostname").stdout.strip() == namespace_host.hostname


def test_slurm_runs_steps(slurm_cluster: SlurmCluster) -> None:
    step = slurm_cluster.srun(["--exact", "-n1", "hostname"], timeout=60)
    assert step.stdout.strip() == socket.gethostname()
    # Two steps side by side in one allocation: --exact keeps the first from taking it all.
    both = slurm_cluster.command(
        ["salloc", "-n2", "-t1", "sh", "-c",
         "srun --exact -n1 echo a & srun --exact -n1 echo b; wait"], timeout=60)
    assert sorted(both.stdout.split()) == ["a", "b"]


def test_bare_python_has_nothing_installed(bare_python: BarePython) -> None:
    version = _proc.run([str(bare_python.python), "-c",
                         "import sys; print(list(sys.version_info[:2]))"]).stdout
    assert json.loads(version) == list(sys.version_info[:2])
    for module in ("msgspec", "rpc_parallel", "pip"):
        found = _proc.run([str(bare_python.python), "-c", f"import {module}"], check=False)
        assert found.returncode != 0, f"{module} is importable in the bare Python"


# ---------------------------------------------------------------------- nothing left behind


def _skip_if_unavailable(error: _proc.Unavailable) -> None:
    pytest.skip(str(error))


def test_sshd_teardown_leaves_nothing() -> None:
    server = Sshd()
    try:
        host = server.start()
    except _proc.Unavailable as error:
        _skip_if_unavailable(error)
    host.ssh("true")
    assert server.process is not None
    sshd_pid = server.process.pid
    masters = [pid for pid in _proc.processes_mentioning(str(host.directory))
               if pid != sshd_pid and pid not in _proc.descendants(sshd_pid)]
    assert masters, "expected a ControlPersist master outliving `ssh true`"
    started = [sshd_pid, *masters, *_proc.descendants(sshd_pid)]
    server.stop()
    assert not [pid for pid in started if _proc.alive(pid)]
    assert not _proc.processes_mentioning(str(host.directory))
    assert not host.directory.exists()
    assert not _proc.tcp_open(host.address, host.port)


def _ip_json(*argv: str) -> list[dict[str, object]]:
    out = _proc.run(["ip", "-j", *argv]).stdout.strip()
    parsed: list[dict[str, object]] = json.loads(out) if out else []
    return parsed


def test_namespace_teardown_leaves_nothing() -> None:
    host = NamespaceHost()
    try:
        host.start()
    except _proc.Unavailable as error:
        _skip_if_unavailable(error)
    ssh = host.ssh_host
    ssh.ssh("nohup sleep 300 >/dev/null 2>&1 </dev/null &")  # a process that outlives ssh
    started = host.pids()
    assert len(started) >= 2
    host.partition()
    host.stop()
    assert not [pid for pid in started if _proc.alive(pid)]
    assert host.name not in _proc.run(["ip", "netns", "list"]).stdout
    assert not Path(f"/run/netns/{host.name}").exists()
    assert not [link for link in _ip_json("link") if link.get("ifname") == host._links[0]]
    routes = _ip_json("route", "show", "table", "all")
    assert not [r for r in routes if r.get("dst") == str(host.subnet)]
    assert not ssh.directory.exists()


def test_slurm_teardown_leaves_nothing() -> None:
    cluster = SlurmCluster(cpus=2)
    try:
        cluster.start()
    except _proc.Unavailable as error:
        _skip_if_unavailable(error)
    cluster.sbatch(["-o", "/dev/null", "--wrap", "sleep 300"])
    _proc.wait_until(lambda: bool(cluster.jobs()), 10, "the job to be queued")
    daemons, directory = cluster.daemon_pids, cluster.directory
    cluster.stop()
    assert not [pid for pid in daemons if _proc.alive(pid)]
    assert not _proc.processes_mentioning(str(directory))
    assert not directory.exists()


def test_bare_python_teardown_leaves_nothing() -> None:
    bare = BarePython.create()
    assert bare.python.exists()
    bare.stop()
    assert not bare.directory.exists()
