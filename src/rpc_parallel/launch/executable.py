"""``rp.RemoteExecutable``: the application packed once, copied to a host, checked before use.

The bundle (see ``_pack``) goes to ``<directory>/<id>/`` on the host as a tar stream on ssh's
stdin, extracted by the host's own python (no ``tar`` needed) into a staging directory,
verified and renamed into place. Every use on the host goes through the bootstrap
(``_boot.py``), sent on stdin with a request: it checks the manifest against the id the master
holds, the host's Python against the one the bundle needs, and every file's size and sha256;
only then does it import anything from the bundle.

A launcher spawns a worker in ONE ssh connection::

    argv = exe.target.argv(exe.python_argv())      # ssh ... host '<python> -I -S -B -c <stub>'
    stdin = exe.boot_input(["worker", name, "child-of", f"{pid}@{host}"])
    # write stdin, then the worker's configuration (sys_path=exe.sys_path,
    # main_path=exe.remote_file(main_path)), and keep stdin open for the worker's life.

``exe.sys_path`` holds the standard library of ``exe.python`` as the host reported it; a
launcher that runs another python there must ask that python for its own (``-I -S``).

A refused bundle ends that process with ``EXIT_REFUSED`` and one ``rpc_parallel bundle:`` line on
stderr; ``exe.spawn_failure(returncode, stderr)`` turns it into the ``rp.SpawnError``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpawnError
from . import _boot, _process, _ssh

if TYPE_CHECKING:  # Packing (importlib.metadata, tarfile) is imported when first used.
    from ._pack import Bundle


def application_bundle() -> Bundle:
    from ._pack import application_bundle as pack

    return pack()

_BOOT_SOURCE = Path(__file__).with_name("_boot.py").read_bytes()
EXIT_REFUSED = _boot.EXIT_REFUSED
_TIMEOUT = 60.0
"""Seconds for a verify, probe or delete; a copy gets this plus one second per MiB."""


def _frame(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _request(action: str, root: str, bundle: Bundle, **fields: Any) -> bytes:
    """The bootstrap's source and one request, as the remote stub reads them."""
    request = {"action": action, "root": root, "id": bundle.id, **fields}
    return _frame(_BOOT_SOURCE) + _frame(json.dumps(request).encode())


def _answer(completed: _ssh.Completed, target: _ssh.Target, what: str) -> dict[str, Any]:
    """The bootstrap's last answer line; anything else (shell noise) is ignored."""
    answer: dict[str, Any] | None = None
    for line in completed.stdout.splitlines():
        answer = _parse(line) or answer
    if answer is None:
        raise _ssh.failure(target, what, completed.returncode, completed.stderr)
    if answer.get("status") == "error":
        raise SpawnError(f"{what} on host {target.host}: {answer['message']}",
                         stderr_tail=completed.stderr.decode(errors="replace")[-4000:])
    return answer


def _parse(line: bytes) -> dict[str, Any] | None:
    """A bootstrap answer line (``RPBOOT1 <json>``), or None for any other output."""
    if not line.startswith(_boot.ANSWER_PREFIX.encode()):
        return None
    try:
        answer = json.loads(line[len(_boot.ANSWER_PREFIX):])
    except ValueError:
        return None
    return answer if isinstance(answer, dict) and "status" in answer else None


def _status(line: bytes) -> str | None:
    answer = _parse(line)
    return None if answer is None else str(answer["status"])


class _Chunks(io.RawIOBase):
    """Where ``tarfile`` writes: chunks taken away after each file and sent to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self.chunks = b"".join(self.chunks), []
        return data


def _read(content: Path | bytes) -> tuple[bytes, int]:
    if isinstance(content, bytes):
        return content, 0o644
    return content.read_bytes(), 0o755 if os.access(content, os.X_OK) else 0o644


async def _send_tar(bundle: Bundle, stdin: asyncio.StreamWriter) -> None:
    """Stream the bundle's files as an uncompressed tar (fixed owner and time), file by file."""
    import tarfile

    sink = _Chunks()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        for relpath in sorted(bundle.sources):
            data, mode = await asyncio.to_thread(_read, bundle.sources[relpath])
            info = tarfile.TarInfo(relpath)
            info.size, info.mode = len(data), mode
            archive.addfile(info, io.BytesIO(data))
            if not _process.write_unless_closed(stdin, sink.take()):
                return  # the host ended: its answer and stderr say why
            await stdin.drain()
    if _process.write_unless_closed(stdin, sink.take()):
        await stdin.drain()


class RemoteExecutable:
    """The application's bundle on one host (``copy_to_host`` / ``existing_on_host``)."""

    def __init__(self, target: _ssh.Target, path: str, bundle: Bundle, python: str,
                 created: Sequence[str] = (), stdlib: Sequence[str] = ()) -> None:
        self.target = target
        self.path = path
        """The bundle's directory on the host (absolute): ``<directory>/<id>``."""
        self.bundle = bundle
        self.python = python
        """The host's python used to copy, and by default to run workers."""
        self.stdlib = list(stdlib)
        """The standard library path of ``python`` on the host (reported by the host)."""
        self._created = list(created)
        """The directories ``copy_to_host`` made for the bundle (``delete`` removes them)."""

    @property
    def host(self) -> str:
        return self.target.host

    @property
    def id(self) -> str:
        """The sha256 of the bundle's canonical manifest (what the host is checked against)."""
        return self.bundle.id

    def __repr__(self) -> str:
        return f"RemoteExecutable(host={self.host!r}, path={self.path!r})"

    @classmethod
    async def copy_to_host(
        cls, host: str, directory: str, *, user: str | None = None, port: int | None = None,
        ssh_options: Sequence[str] = (), python: str = "python3",
    ) -> RemoteExecutable:
        """Copy the application's bundle to ``<directory>/<id>`` on ``host`` (skipped when an
        identical bundle is there; a damaged one is replaced). ``directory`` may start with
        ``~``; it is made (mode 0700) when missing, and ``delete`` removes it again."""
        target = _ssh.SshTarget(host, user, port, tuple(ssh_options))
        return await cls._copy(target, directory, python)

    @classmethod
    async def existing_on_host(
        cls, host: str, path: str, *, user: str | None = None, port: int | None = None,
        ssh_options: Sequence[str] = (), python: str = "python3",
    ) -> RemoteExecutable:
        """The bundle already at ``path`` (what ``exe.path`` was), checked to be identical to
        this application's."""
        target = _ssh.SshTarget(host, user, port, tuple(ssh_options))
        return await cls._existing(target, path, python)

    @classmethod
    async def _copy(cls, target: _ssh.Target, directory: str, python: str) -> RemoteExecutable:
        bundle = await asyncio.to_thread(application_bundle)
        return await cls._copy_bundle(target, directory, python, bundle)

    @classmethod
    async def _existing(cls, target: _ssh.Target, path: str, python: str) -> RemoteExecutable:
        bundle = await asyncio.to_thread(application_bundle)
        return await cls._check_existing(target, path, python, bundle)

    @classmethod
    async def _check_existing(
        cls, target: _ssh.Target, path: str, python: str, bundle: Bundle
    ) -> RemoteExecutable:
        exe = cls(target, path.rstrip("/"), bundle, python)
        if os.path.basename(exe.path) != bundle.id:
            raise SpawnError(
                f"no identical bundle at {path} on host {target.host}: this application's "
                f"bundle is {bundle.id} (the last part of the path must be that id)"
            )
        answer = await exe._call("verify")
        exe.path, exe.stdlib = answer["root"], answer["stdlib"]
        return exe

    @classmethod
    async def _copy_bundle(
        cls, target: _ssh.Target, directory: str, python: str, bundle: Bundle
    ) -> RemoteExecutable:
        root = f"{directory.rstrip('/')}/{bundle.id}"
        what = f"copying bundle {bundle.id[:12]} to {root}"
        header = _request("install", root, bundle, manifest=bundle.manifest.decode())
        process = await _ssh.start(target, cls._python_argv(python))
        try:
            completed = await asyncio.wait_for(
                cls._install(process, header, bundle), _TIMEOUT + bundle.size / (1 << 20)
            )
        except TimeoutError:
            raise _ssh.failure(target, what, None, b"") from None
        finally:
            await _ssh.reap(process)
        answer = _answer(completed, target, what)
        return cls(target, answer["root"], bundle, python, answer["created"], answer["stdlib"])

    @staticmethod
    async def _install(
        process: asyncio.subprocess.Process, header: bytes, bundle: Bundle
    ) -> _ssh.Completed:
        """Send the request; stream the tar only if the host answers that it needs it."""
        assert process.stdin is not None and process.stdout is not None
        assert process.stderr is not None
        stderr = asyncio.ensure_future(process.stderr.read())
        lines: list[bytes] = []
        try:
            if _process.write_unless_closed(process.stdin, header):
                await process.stdin.drain()
            while line := await process.stdout.readline():
                lines.append(line)
                if _parse(line) is not None:
                    break
            if lines and _status(lines[-1]) == "send":
                await _send_tar(bundle, process.stdin)
        except (ConnectionError, OSError):
            pass  # The far side ended; its answer and stderr say why.
        process.stdin.close()
        lines.append(await process.stdout.read())
        returncode = await process.wait()
        return _ssh.Completed(returncode, b"".join(lines), await stderr)

    @staticmethod
    def _python_argv(python: str) -> list[str]:
        return [python, "-I", "-S", "-B", "-c", _boot.STUB]

    def python_argv(self, python: str | None = None) -> list[str]:
        """The command to run on the host (before ssh wraps it): an isolated python (no
        site-packages, no environment variables, no bytecode writing) that runs the stub."""
        return self._python_argv(python or self.python)

    def boot_input(self, argv: Sequence[str]) -> bytes:
        """What to write first on the worker's stdin: verify, then run
        ``python -m rpc_parallel <argv>`` from the bundle (its configuration follows)."""
        return _request("run", self.path, self.bundle, argv=list(argv))

    def remote_file(self, local_path: str) -> str | None:
        """Where a shipped local file (the main script, a module) is on the host."""
        relpath = self.bundle.local_paths.get(os.path.realpath(local_path))
        return None if relpath is None else f"{self.path}/{relpath}"

    def worker_paths(self, main_path: str | None, where: str) -> tuple[list[str], str | None]:
        """A worker's import path and main script when it runs from this bundle: the
        bundle's import path and its copy of the master's main script (``where`` names the
        place in the error when the script was not shipped)."""
        if main_path is None:
            return self.sys_path, None
        shipped = self.remote_file(main_path)
        if shipped is None:
            raise SpawnError(f"the main script {main_path} is not in the bundle {where}: "
                             "copy the executable from this program")
        return self.sys_path, shipped

    @property
    def sys_path(self) -> list[str]:
        """The worker's whole import path on the host, for its configuration: the bundle's
        import root, then the standard library of ``self.python`` there."""
        return [f"{self.path}/{_boot.LIB}", *self.stdlib]

    def spawn_failure(self, returncode: int | None, stderr: bytes) -> SpawnError:
        """The ``rp.SpawnError`` for a boot process that ended before the worker started."""
        text = stderr.decode(errors="replace")
        refused = [line for line in text.splitlines() if line.startswith("rpc_parallel bundle:")]
        if returncode == EXIT_REFUSED and refused:
            return SpawnError(f"cannot start a worker from the bundle on host {self.host}: "
                              f"{refused[-1].removeprefix('rpc_parallel bundle: ')}",
                              stderr_tail=text[-4000:])
        return _ssh.failure(self.target, "starting a worker from the bundle", returncode, stderr)

    async def _call(self, action: str, **fields: Any) -> dict[str, Any]:
        what = f"{action} of bundle {self.id[:12]} at {self.path}"
        completed = await _ssh.run(
            self.target, self.python_argv(), _request(action, self.path, self.bundle, **fields),
            timeout=_TIMEOUT, what=what,
        )
        return _answer(completed, self.target, what)

    async def verify(self) -> None:
        """Check on the host that every file matches the manifest whose hash this process
        holds, and that the host's Python can load it; ``rp.SpawnError`` names what differs."""
        await self._call("verify")

    async def probe(self, modules: Sequence[str]) -> dict[str, str | None]:
        """Verify, then import ``modules`` from the bundle on the host: where each came from."""
        answer = await self._call("probe", modules=list(modules))
        files: dict[str, str | None] = answer["files"]
        return files

    async def delete(self) -> None:
        """Remove every file the bundle put on the host (and the directory ``copy_to_host``
        made for it, when empty), nothing else."""
        await self._call("delete", manifest=self.bundle.manifest.decode(),
                         created=self._created)
