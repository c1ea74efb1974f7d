"""A second "host" on this machine: a network namespace joined by a veth pair.

The namespace has its own address in a /30 of 10.213.0.0/16 that nothing on this machine
uses, its own hostname (a UTS namespace around its sshd) and its own sshd on that address.
A blackhole route for the /30 (metric 4242) keeps test traffic on the machine even when the
link is down. Where the machine has IPv6, the link has IPv6 too: unique local addresses in
a /64 of ``POOL6`` made from the /30 (so concurrent runs never collide), added without
duplicate address detection so they work at once, with the same blackhole route; the sshd
listens on both, and ``ssh_host6`` reaches it over IPv6. ``partition()`` installs an nftables table that drops everything inside the
namespace (except its loopback); ``heal()`` removes it. Names carry this process's pid and a
counter, so concurrent runs never collide. ``stop()`` kills every process in the namespace,
deletes the namespace, the veth pair and the route, and removes the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import itertools
import json
import os
import socket
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from . import _proc
from .sshd import Sshd, SshHost

POOL = ipaddress.IPv4Network("10.213.0.0/16")
POOL6 = ipaddress.IPv6Network("fd52:7270:6172::/48")
"""Unique local IPv6 prefix; the namespace for the /30 number N of ``POOL`` gets /64 N."""
BLACKHOLE_METRIC = 4242
_counter = itertools.count()
_PARTITION = """\
table inet rp_partition {
  chain in  { type filter hook input  priority 0; policy drop; iifname "lo" accept; }
  chain out { type filter hook output priority 0; policy drop; oifname "lo" accept; }
}
"""


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 prefix in any routing table or on any interface of this namespace."""
    used = []
    routes = json.loads(_proc.run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout)
    for route in routes:
        dst = route.get("dst", "default")
        if dst != "default":
            used.append(ipaddress.ip_network(dst, strict=False))
    for link in json.loads(_proc.run(["ip", "-j", "-4", "addr"]).stdout):
        for info in link.get("addr_info", []):
            used.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    return [n for n in used if isinstance(n, ipaddress.IPv4Network)]


def _free_subnet(start: int) -> ipaddress.IPv4Network:
    used = _networks_in_use()
    subnets: list[ipaddress.IPv4Network] = list(POOL.subnets(new_prefix=30))
    for i in range(len(subnets)):
        candidate = subnets[(start + i) % len(subnets)]
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    raise RuntimeError(f"no free /30 left in {POOL}")


@contextlib.contextmanager
def _setup_lock() -> Iterator[None]:
    """Serialise subnet choice and creation between concurrent test runs.

    The lock is taken on a directory that exists anyway, so no lock file is left behind.
    """
    directory = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _subnet6(subnet: ipaddress.IPv4Network) -> ipaddress.IPv6Network:
    """The IPv6 /64 paired with ``subnet`` (one of ``POOL``'s /30s)."""
    index = (int(subnet.network_address) - int(POOL.network_address)) >> 2
    return ipaddress.IPv6Network((int(POOL6.network_address) + (index << 64), 64))


def _ipv6_in_use(subnet: ipaddress.IPv6Network) -> bool:
    routes = json.loads(_proc.run(["ip", "-j", "-6", "route", "show", "table", "all"]).stdout)
    for route in routes:
        dst = route.get("dst", "default")
        if dst not in ("default", "") and subnet.overlaps(ipaddress.ip_network(dst, strict=False)):
            return True
    return False


@dataclass
class SshHostOverIpv6(SshHost):
    """The namespace's sshd reached at its IPv6 address: the same alias, keys and host key,
    with ``HostName`` overridden (and the known host looked up under its IPv4 name)."""

    overrides: list[str] = field(default_factory=list)

    @property
    def ssh_options(self) -> list[str]:
        return [*super().ssh_options, *self.overrides]


@dataclass
class NamespaceHost:
    """The namespace "host". ``address`` is its side of the link, ``host_address`` ours;
    ``address6`` and ``host_address6`` the same in IPv6 (empty where the machine has none,
    ``ipv6_missing`` then says why)."""

    name: str = ""
    hostname: str = ""
    subnet: ipaddress.IPv4Network | None = None
    host_address: str = ""
    address: str = ""
    subnet6: ipaddress.IPv6Network | None = None
    host_address6: str = ""
    address6: str = ""
    ipv6_missing: str = ""
    ssh: SshHost | None = None
    ssh6: SshHostOverIpv6 | None = None
    _links: tuple[str, str] = ("", "")
    _sshd: Sshd | None = None
    _made: list[str] = field(default_factory=list)

    @property
    def ssh_host(self) -> SshHost:
        assert self.ssh is not None, "the namespace host is not started"
        return self.ssh

    @property
    def ssh_host6(self) -> SshHostOverIpv6:
        """The namespace's sshd over IPv6 (``SSH_CONNECTION`` there has IPv6 addresses)."""
        assert self.ssh6 is not None, f"the namespace host has no IPv6: {self.ipv6_missing}"
        return self.ssh6

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the namespace (same files and users, its own network)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: Sequence[str], *, timeout: float = 30.0, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return _proc.run(self.exec_argv(argv), timeout=timeout, check=check, input=input)

    def start(self) -> NamespaceHost:
        _proc.require_root("a namespace host")
        _proc.require_binaries("a namespace host", "ip", "nft", "unshare", "sshd", "ssh")
        n = next(_counter)
        pid = os.getpid()
        self.name, self.hostname = f"rp-test-{pid}-{n}", f"rp-nshost-{pid}-{n}"
        self._links = (f"rph{pid}x{n}"[:15], f"rpn{pid}x{n}"[:15])
        try:
            with _setup_lock():
                self._make_network(pid * 31 + n)
            self._start_sshd()
        except BaseException:
            self.stop()
            raise
        return self

    def _make_network(self, start: int) -> None:
        self.subnet = _free_subnet(start)
        host_ip, ns_ip = (str(a) for a in self.subnet.hosts())
        self.host_address, self.address = host_ip, ns_ip
        ours, theirs = self._links
        prefix = self.subnet.prefixlen
        _proc.run(["ip", "netns", "add", self.name])
        self._made.append("netns")
        _proc.run(["ip", "link", "add", ours, "type", "veth", "peer", "name", theirs,
                   "netns", self.name])
        self._made.append("link")
        _proc.run(["ip", "route", "replace", "blackhole", str(self.subnet),
                   "metric", str(BLACKHOLE_METRIC)])
        self._made.append("route")
        _proc.run(["ip", "addr", "add", f"{host_ip}/{prefix}", "dev", ours])
        _proc.run(["ip", "link", "set", ours, "up"])
        _proc.run(["ip", "-n", self.name, "addr", "add", f"{ns_ip}/{prefix}", "dev", theirs])
        _proc.run(["ip", "-n", self.name, "link", "set", theirs, "up"])
        _proc.run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        self._make_ipv6()

    def _make_ipv6(self) -> None:
        """IPv6 on the link, if the machine has it (else ``ipv6_missing`` says why)."""
        assert self.subnet is not None
        subnet6 = _subnet6(self.subnet)
        if not socket.has_ipv6 or not os.path.exists("/proc/net/if_inet6"):
            self.ipv6_missing = "this machine has no IPv6"
            return
        if _ipv6_in_use(subnet6):
            self.ipv6_missing = f"{subnet6} is routed on this machine already"
            return
        host_ip, ns_ip = str(subnet6[1]), str(subnet6[2])
        ours, theirs = self._links
        _proc.run(["ip", "-6", "route", "replace", "blackhole", str(subnet6),
                   "metric", str(BLACKHOLE_METRIC)])
        self.subnet6 = subnet6
        self._made.append("route6")
        try:
            _proc.run(["ip", "addr", "add", f"{host_ip}/64", "dev", ours, "nodad"])
            _proc.run(["ip", "-n", self.name, "addr", "add", f"{ns_ip}/64", "dev", theirs,
                       "nodad"])
        except RuntimeError as error:  # IPv6 turned off on the interfaces
            self.ipv6_missing = f"IPv6 addresses cannot be added: {error}"
            return
        self.host_address6, self.address6 = host_ip, ns_ip

    def _start_sshd(self) -> None:
        # sshd's own argv (after the prefix) gets one more ListenAddress: the IPv6 one.
        script = 'hostname "$0" && exec "$@"'
        if self.address6:
            script += f' -o "ListenAddress=[{self.address6}]:22"'
        prefix = self.exec_argv(["unshare", "--uts", "--", "sh", "-c", script, self.hostname])
        self._sshd = Sshd(address=self.address, port=22, alias="rp-nshost", prefix=prefix)
        self.ssh = ssh = self._sshd.start()
        if ssh.hostname != self.hostname:
            raise RuntimeError(f"namespace sshd reports hostname {ssh.hostname!r}, "
                               f"expected {self.hostname!r}")
        if self.address6:
            self.ssh6 = SshHostOverIpv6(
                ssh.alias, ssh.config, self.address6, ssh.port, ssh.user, ssh.directory,
                ssh.hostname,
                overrides=["-o", f"HostName={self.address6}", "-o", f"HostKeyAlias={self.address}"])
            if self.ssh6.ssh("hostname", check=False).stdout.strip() != self.hostname:
                raise RuntimeError(f"the namespace sshd does not answer on {self.address6}")

    def partition(self) -> None:
        """Drop every packet in and out of the namespace (loopback excepted)."""
        self.run(["nft", "-f", "-"], input=_PARTITION, timeout=10)

    def heal(self) -> bool:
        """End a partition; whether there was one."""
        result = self.run(["nft", "delete", "table", "inet", "rp_partition"], timeout=10,
                          check=False)
        return result.returncode == 0

    @property
    def partitioned(self) -> bool:
        listing = self.run(["nft", "list", "tables"], timeout=10, check=False).stdout
        return "rp_partition" in listing

    def pids(self) -> list[int]:
        """Every process in the namespace (sshd, sessions, anything started inside)."""
        result = _proc.run(["ip", "netns", "pids", self.name], timeout=10, check=False)
        return [int(word) for word in result.stdout.split()]

    def stop(self) -> None:
        """Kill everything inside, delete the namespace, link and route, remove files."""
        if "netns" in self._made:
            self.heal()  # lets the ssh masters say goodbye instead of timing out
        if self.ssh6 is not None:
            self.ssh6.close_masters()
        if self._sshd is not None:
            self._sshd.stop()
        if "netns" in self._made:
            _proc.stop_pids(self.pids())
            _proc.run(["ip", "netns", "del", self.name], timeout=10, check=False)
        if "link" in self._made:
            _proc.run(["ip", "link", "del", self._links[0]], timeout=10, check=False)
        if "route" in self._made:
            _proc.run(["ip", "route", "del", "blackhole", str(self.subnet), "metric",
                       str(BLACKHOLE_METRIC)], timeout=10, check=False)
        if "route6" in self._made:
            _proc.run(["ip", "-6", "route", "del", "blackhole", str(self.subnet6), "metric",
                       str(BLACKHOLE_METRIC)], timeout=10, check=False)
        self._made.clear()

    def __enter__(self) -> NamespaceHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
