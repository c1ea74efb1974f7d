"""A real OpenSSH server for tests, and the client files that reach it.

``Sshd`` starts ``/usr/sbin/sshd -D`` (a child of this process) with a generated host key,
a generated user key, ``authorized_keys``, ``known_hosts`` and an ``ssh_config`` whose Host
alias carries everything (``ssh -F <config> <alias>``). Connections are multiplexed through
a ControlMaster socket in the same private directory; ``stop()`` ends those masters, the
server and its sessions, and removes the directory.
"""

from __future__ import annotations

import getpass
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import _proc

SSH_TIMEOUT = 30.0
"""Default bound on one command run over ssh."""


@dataclass
class SshHost:
    """How a test reaches a host over ssh: ``ssh <ssh_options> <alias> COMMAND``."""

    alias: str
    config: Path
    address: str
    port: int
    user: str
    directory: Path
    hostname: str = ""
    """The name the host reports (``hostname`` run over ssh)."""

    @property
    def ssh_options(self) -> list[str]:
        return ["-F", str(self.config)]

    def ssh_argv(self, command: str | Sequence[str]) -> list[str]:
        """The argv of ``ssh`` running ``command`` (a string, or words quoted for the shell)."""
        remote = command if isinstance(command, str) else shlex.join(command)
        return ["ssh", *self.ssh_options, self.alias, remote]

    def ssh(self, command: str | Sequence[str], *, timeout: float = SSH_TIMEOUT,
            check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``command`` on the host; ``RuntimeError`` with ssh's stderr if it fails."""
        return _proc.run(self.ssh_argv(command), timeout=timeout, check=check, input=input)

    def close_masters(self) -> None:
        """End the ControlMaster of this alias (if one runs), bounded."""
        _proc.run(["ssh", *self.ssh_options, "-O", "exit", self.alias], timeout=10, check=False)


def _keygen(path: Path, comment: str) -> None:
    _proc.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


@dataclass
class Sshd:
    """An sshd listening on ``address:port``; ``prefix`` wraps its argv (e.g. ``ip netns exec``)."""

    address: str = "127.0.0.1"
    port: int = 0
    alias: str = "rp-loopback"
    prefix: Sequence[str] = ()
    host: SshHost | None = None
    process: subprocess.Popen[bytes] | None = None
    directory: Path = field(default_factory=Path)

    def start(self, timeout: float = 15.0) -> SshHost:
        _proc.require_root("a test sshd")
        binaries = _proc.require_binaries("a test sshd", "sshd", "ssh", "ssh-keygen")
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation (Debian's)
        self.directory = Path(tempfile.mkdtemp(prefix=f"rp-sshd-{os.getpid()}-"))
        try:
            self.port = self.port or _proc.free_tcp_port(self.address)
            self.host = self._write_files()
            argv = [*self.prefix, binaries["sshd"], "-D", "-f", str(self.directory / "sshd_config"),
                    "-E", str(self.directory / "sshd.log")]
            self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._wait_ready(timeout)
            return self.host
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        assert self.host is not None and self.process is not None
        host, process = self.host, self.process
        last = [""]

        def answered() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"sshd exited with {process.returncode}: {self.log()}")
            result = host.ssh("true", timeout=5, check=False)
            last[0] = result.stderr.strip()
            return result.returncode == 0

        try:
            _proc.wait_until(answered, timeout, f"sshd on {self.address}:{self.port}", 0.1)
        except TimeoutError as error:
            raise RuntimeError(f"{error}; ssh said: {last[0]}; sshd log: {self.log()}") from None
        host.hostname = host.ssh("hostname").stdout.strip()

    def log(self) -> str:
        try:
            return (self.directory / "sshd.log").read_text()[-2000:]
        except OSError:
            return "(no log)"

    def _write_files(self) -> SshHost:
        d = self.directory
        _keygen(d / "host_key", f"{self.alias}-host")
        _keygen(d / "id_ed25519", f"{self.alias}-user")
        shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
        key = " ".join((d / "host_key.pub").read_text().split()[:2])
        name = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        (d / "known_hosts").write_text(f"{name} {key}\n")
        user = getpass.getuser()
        (d / "sshd_config").write_text(_SSHD_CONFIG.format(d=d, address=self.address, port=self.port))
        (d / "ssh_config").write_text(_SSH_CONFIG.format(
            d=d, alias=self.alias, address=self.address, port=self.port, user=user))
        return SshHost(self.alias, d / "ssh_config", self.address, self.port, user, d)

    def stop(self) -> None:
        """End masters, the server and every session it started; remove the directory."""
        if self.host is not None:
            self.host.close_masters()
        sessions = _proc.descendants(self.process.pid) if self.process is not None else []
        if self.process is not None:
            _proc.stop_popen(self.process)
        leftovers = sessions + _proc.processes_mentioning(str(self.directory))
        _proc.stop_pids(leftovers)
        if self.directory != Path():
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SshHost:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


_SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 200
Subsystem sftp internal-sftp
LogLevel VERBOSE
ClientAliveInterval 2
ClientAliveCountMax 3
"""

_SSH_CONFIG = """\
Host {alias}
  HostName {address}
  Port {port}
  User {user}
  IdentityFile {d}/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  UpdateHostKeys no
  CheckHostIP no
  BatchMode yes
  ConnectTimeout 5
  ServerAliveInterval 2
  ServerAliveCountMax 3
  ControlMaster auto
  ControlPath {d}/cm-%C
  ControlPersist 60
"""
