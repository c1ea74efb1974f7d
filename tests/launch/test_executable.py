"""rp.RemoteExecutable: a bundle packed here, installed and checked by a bare host python.

The "host" is this machine: the bundle's bootstrap runs under the python of a fresh
``python -m venv --without-pip`` (nothing installed), first directly as a subprocess, then
through a real ``sshd`` on a loopback port when OpenSSH's server is installed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import rpc_parallel as rp
from rpc_parallel.launch import _boot, _pack, _ssh
from rpc_parallel.launch._pack import Bundle
from rpc_parallel.launch.executable import RemoteExecutable

from ..hardening.support import poll

APP_MODULE = "rp_exe_sample_app"
WORKER_MODULE = textwrap.dedent("""
    import sys

    import rpc_parallel as rp

    VALUE = 42


    class Where(rp.Worker[int]):
        async def init_worker_state(self, value: int) -> None:
            self.value = value

        @rp.rpc
        async def where(self) -> list[str]:
            import msgspec
            import rpc_parallel._worker_main

            return [sys.executable, msgspec.__file__, rp.__file__,
                    rpc_parallel._worker_main.__file__, __file__, str(self.value), *sys.path]
""")


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A CPython with nothing installed: no msgspec, no rpc_parallel."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import msgspec"], capture_output=True, timeout=60)
    assert probe.returncode != 0, "the bare venv must not see msgspec"
    return python


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bundle]:
    """The bundle of a small application: a main script and one module of its own."""
    source = tmp_path_factory.mktemp("appsrc")
    (source / f"{APP_MODULE}.py").write_text(WORKER_MODULE)
    main = source / "rp_exe_main.py"
    main.write_text(f"import {APP_MODULE}\n")
    sys.path.insert(0, str(source))
    try:
        import msgspec

        module = __import__(APP_MODULE)
        yield _pack.pack([msgspec, module], str(main))
    finally:
        sys.path.remove(str(source))
        sys.modules.pop(APP_MODULE, None)


async def copy(bundle: Bundle, directory: Path, python: str) -> RemoteExecutable:
    return await RemoteExecutable._copy_bundle(_ssh.DirectTarget(), str(directory), python, bundle)


async def boot(exe: RemoteExecutable, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run the bootstrap's ``run`` action as a launcher would, here without ssh."""
    return await asyncio.to_thread(
        subprocess.run, exe.python_argv(), input=exe.boot_input(argv), capture_output=True,
        timeout=60, env={**os.environ, "PYTHONPATH": "/nonexistent"},
    )


def file_of(exe: RemoteExecutable, relpath: str) -> Path:
    return Path(exe.path) / relpath


async def test_bundle_imports_only_from_itself_on_a_bare_python(
    bundle: Bundle, bare_python: str, tmp_path: Path
) -> None:
    exe = await copy(bundle, tmp_path / "bundles", bare_python)
    assert exe.path == str(tmp_path / "bundles" / bundle.id)
    files = await exe.probe(["msgspec", "msgspec._core", "rpc_parallel", "rpc_parallel._worker_main",
                             APP_MODULE])
    for name, file in files.items():
        assert file is not None and file.startswith(exe.path + "/lib/"), (name, file)
    assert exe.remote_file(str(Path(sys.modules["msgspec"].__file__ or ""))) == (
        f"{exe.path}/lib/msgspec/__init__.py")
    manifest = json.loads(bundle.manifest)
    assert {"msgspec", "rpc-parallel"} <= set(manifest["distributions"])
    assert any(path.endswith("rp_exe_main.py") for path, _, _ in manifest["files"])
    await exe.delete()


async def test_copy_is_skipped_when_identical_and_repairs_a_damaged_copy(
    bundle: Bundle, bare_python: str, tmp_path: Path
) -> None:
    exe = await copy(bundle, tmp_path, bare_python)
    before = os.stat(exe.path).st_ino
    again = await copy(bundle, tmp_path, bare_python)
    assert again.path == exe.path and os.stat(exe.path).st_ino == before
    file_of(exe, "lib/msgspec/__init__.py").write_text("raise SystemExit('tampered')\n")
    await copy(bundle, tmp_path, bare_python)
    await exe.verify()
    assert os.stat(exe.path).st_ino != before
    assert sorted(os.listdir(tmp_path)) == [bundle.id], "no staging directory is left"
    await exe.delete()


@pytest.mark.parametrize("damage", ["changed", "missing", "added"])
async def test_a_changed_missing_or_added_file_is_refused_naming_it(
    bundle: Bundle, bare_python: str, tmp_path: Path, damage: str
) -> None:
    exe = await copy(bundle, tmp_path, bare_python)
    relpath = {"changed": f"lib/{APP_MODULE}.py", "missing": "lib/msgspec/__init__.py",
               "added": "lib/msgspec/extra.py"}[damage]
    target = file_of(exe, relpath)
    if damage == "changed":
        target.write_text(target.read_text().replace("42", "43"))  # Same size: only the hash.
    elif damage == "missing":
        target.unlink()
    else:
        target.write_text("print('not shipped')\n")
    with pytest.raises(rp.SpawnError, match=f"{damage} file {relpath}"):
        await exe.verify()
    with pytest.raises(rp.SpawnError, match=f"{damage} file {relpath}"):
        await exe.probe(["msgspec"])
    run = await boot(exe, ["worker"])
    assert run.returncode == _boot.EXIT_REFUSED
    error = exe.spawn_failure(run.returncode, run.stderr)
    assert f"{damage} file {relpath}" in str(error) and "localhost" in str(error)


def with_python_version(bundle: Bundle, version: list[int]) -> Bundle:
    manifest = json.loads(bundle.manifest)
    manifest["python"]["version"] = version
    text = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    import hashlib

    return Bundle(bundle.sources, text, hashlib.sha256(text).hexdigest(), bundle.local_paths)


async def test_a_host_python_that_cannot_load_the_bundle_is_refused_naming_both_sides(
    bundle: Bundle, bare_python: str, tmp_path: Path
) -> None:
    future = with_python_version(bundle, [3, 99])
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    with pytest.raises(rp.SpawnError, match=rf"needs cpython 3\.99 .* runs .* cpython {here} "):
        await copy(future, tmp_path, bare_python)
    assert os.listdir(tmp_path) == [], "nothing is copied to a host that cannot use it"
    # A bundle already on the host is checked the same way before each use.
    exe = await copy(bundle, tmp_path, bare_python)
    root = tmp_path / future.id
    shutil.copytree(exe.path, root)
    (root / _boot.MANIFEST).write_bytes(future.manifest)
    installed = RemoteExecutable(_ssh.DirectTarget(), str(root), future, bare_python)
    with pytest.raises(rp.SpawnError, match=rf"needs cpython 3\.99 .*cpython {here} "):
        await installed.verify()
    run = await boot(installed, ["worker"])
    assert "cpython 3.99" in str(installed.spawn_failure(run.returncode, run.stderr))


async def test_run_starts_rpc_parallel_from_the_bundle(
    bundle: Bundle, bare_python: str, tmp_path: Path
) -> None:
    exe = await copy(bundle, tmp_path, bare_python)
    # Without "worker" the module prints its usage: proof that it ran, from the bundle.
    run = await boot(exe, ["help"])
    assert run.returncode == 2, run.stderr
    assert b"usage: python -m rpc_parallel worker" in run.stderr


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory with a short path (a Unix socket path must fit in 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="rp-exe-"))
    yield path
    shutil.rmtree(path)


async def test_a_worker_from_the_bundle_registers_and_serves_on_a_bare_python(
    bundle: Bundle, bare_python: str, tmp_path: Path, scratch: Path
) -> None:
    """What a launcher does, here without ssh: boot input, then the worker's configuration
    (its sys.path: the bundle and the host's standard library, as the host reported), on one
    stdin."""
    from rpc_parallel._builtins import INITIALIZING, REGISTER, Registration, WorkerConfig
    from rpc_parallel.launch.redirection import Redirect
    from rpc_parallel.rpc import Implementation, RpcSettings, connect_unix, serve_unix
    from rpc_parallel.rpc.functions import ENCODER

    exe = await copy(bundle, tmp_path / "bundles", bare_python)
    secret = os.urandom(32)
    registered: asyncio.Future[Registration] = asyncio.get_running_loop().create_future()

    async def register(registration: Registration) -> None:
        registered.set_result(registration)

    async def initializing(worker_id: str) -> None:
        assert worker_id == "w1"

    server = await serve_unix(str(tmp_path / "master.sock"), secret=secret, implementations=[
        Implementation(INITIALIZING, initializing), Implementation(REGISTER, register)])
    config = WorkerConfig(
        worker_id="w1", name="where", module=APP_MODULE, qualname="Where", main_path=None,
        sys_path=exe.sys_path, secret=secret,
        master_address=f"unix:{server.address}", settings=RpcSettings(),
        init_arg=ENCODER.encode(7), shutdown_on="connection_closed",
        redirect_stderr=Redirect("forward"), umask=None, parent=f"{os.getpid()}@test")
    payload = msgspec_encode(config)
    worker = await asyncio.create_subprocess_exec(
        *exe.python_argv(), stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(rp.__file__).parent.parent),
             "TMPDIR": str(scratch)})
    assert worker.stdin is not None and worker.stderr is not None
    worker.stdin.write(exe.boot_input(["worker", "where", "child-of", f"{os.getpid()}@test"])
                       + len(payload).to_bytes(4, "little") + payload)
    try:
        registration = await asyncio.wait_for(registered, 60)
        assert registration.error is None
        link = await connect_unix(registration.address.removeprefix("unix:"), secret=secret)
        from rp_exe_sample_app import Where  # type: ignore[import-not-found]

        spec = Where._rpc_parallel_functions["where"].spec
        executable, *files, value = (await link.call(spec))[:6]
        assert executable == bare_python and value == "7"
        for file in files:
            assert file.startswith(exe.path + "/lib/"), files
        link.close("done")
        await link.wait_closed()
    finally:
        server.close("done")  # Closes the worker's link to its master: it exits, cleaning up.
        await server.wait_closed()
        try:
            returncode = await asyncio.wait_for(worker.wait(), 30)
        finally:
            worker.stdin.close()
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
    assert returncode == 0, (await worker.stderr.read()).decode()
    assert os.listdir(scratch) == [], "the worker left nothing in its TMPDIR (no socket directory)"


def msgspec_encode(config: object) -> bytes:
    from rpc_parallel._builtins import CONFIG_ENCODER

    encoded: bytes = CONFIG_ENCODER.encode(config)
    return encoded


async def test_delete_removes_every_copied_file_and_nothing_else(
    bundle: Bundle, bare_python: str, tmp_path: Path
) -> None:
    exe = await copy(bundle, tmp_path / "made" / "for" / "it", bare_python)
    await exe.delete()
    assert not (tmp_path / "made").exists(), "the directories copy_to_host made are gone"
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    exe = await copy(bundle, kept, bare_python)
    (Path(exe.path) / "lib" / "user-file").write_text("not the bundle's")
    await exe.delete()
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*")) == [
        bundle.id, f"{bundle.id}/lib", f"{bundle.id}/lib/user-file", "notes.txt"]


async def test_existing_on_host_checks_the_path_and_the_files(
    bundle: Bundle, bare_python: str, tmp_path: Path
) -> None:
    exe = await copy(bundle, tmp_path, bare_python)
    other = with_python_version(bundle, [3, 1])
    with pytest.raises(rp.SpawnError, match="no identical bundle"):
        await RemoteExecutable._check_existing(_ssh.DirectTarget(), exe.path, bare_python, other)
    found = await RemoteExecutable._check_existing(
        _ssh.DirectTarget(), exe.path, bare_python, bundle)
    assert found.path == exe.path
    missing = str(tmp_path / "elsewhere" / bundle.id)
    with pytest.raises(rp.SpawnError, match=r"no bundle .* at .*elsewhere"):
        await RemoteExecutable._check_existing(_ssh.DirectTarget(), missing, bare_python, bundle)
    await exe.delete()


def test_the_application_bundle_ships_what_it_imports_and_no_dev_tools(tmp_path: Path) -> None:
    """Packed from a plain script (not this pytest process) with the default selection."""
    script = tmp_path / "plain_app.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        import rpc_parallel
        from rpc_parallel.launch import _pack
        start = time.perf_counter()
        bundle = _pack.application_bundle()
        took = time.perf_counter() - start
        assert _pack.application_bundle() is bundle
        manifest = json.loads(bundle.manifest)
        print(json.dumps({"distributions": manifest["distributions"], "files": manifest["files"],
                          "took": took, "compiled": manifest["compiled"]}))
    """))
    src = str(Path(rp.__file__).parent.parent)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": src}, check=True)
    result = json.loads(done.stdout)
    names = set(result["distributions"])
    assert {"msgspec", "rpc-parallel"} <= names
    assert not names & {"pip", "setuptools", "wheel", "pytest", "mypy", "hypothesis"}
    paths = [path for path, _, _ in result["files"]]
    assert "main/plain_app.py" in paths
    assert "lib/rpc_parallel/_worker_main.py" in paths
    for path in paths:  # The only bytecode is what the packer compiled, one per source.
        if "__pycache__" in path:
            directory, _, name = path.partition("/__pycache__/")
            assert f"{directory}/{name.split('.')[0]}.py" in paths, path
    if "uvloop" in sys.modules or _installed("uvloop"):
        assert "uvloop" in names and result["compiled"]


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


# --- through a real sshd on a loopback port --------------------------------------------------

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """A private sshd on 127.0.0.1 for this user; yields the ssh options that reach it."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.skip("OpenSSH server or client not installed")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "id_ed25519"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)],
                       check=True, timeout=60)
    shutil.copy(home / "id_ed25519.pub", home / "authorized_keys")
    port = _free_port()
    host_key = (home / "host_key.pub").read_text().split()[:2]
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {' '.join(host_key)}\n")
    (home / "sshd_config").write_text(textwrap.dedent(f"""
        ListenAddress 127.0.0.1
        Port {port}
        HostKey {home}/host_key
        PidFile none
        AuthorizedKeysFile {home}/authorized_keys
        PermitRootLogin prohibit-password
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        UsePAM no
        StrictModes no
    """))
    os.makedirs("/run/sshd", exist_ok=True)
    log = (home / "sshd.log").open("wb")
    daemon = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")],
                              stdout=log, stderr=log)
    options = ["-F", "/dev/null", "-i", str(home / "id_ed25519"), "-o", "IdentitiesOnly=yes",
               "-o", f"UserKnownHostsFile={home}/known_hosts", "-o", "StrictHostKeyChecking=yes",
               "-o", "ConnectTimeout=10", "-p", str(port)]
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["ssh", *options, "127.0.0.1", "true"], capture_output=True,
                             timeout=30).returncode != 0:
            assert daemon.poll() is None, (home / "sshd.log").read_text()
            assert time.monotonic() < deadline, (home / "sshd.log").read_text()
            time.sleep(0.1)
        yield options
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        log.close()


async def test_copy_verify_probe_and_delete_over_ssh(
    bare_python: str, sshd: list[str], tmp_path: Path, bundle: Bundle
) -> None:
    target = _ssh.SshTarget("127.0.0.1", ssh_options=tuple(sshd))
    directory = tmp_path / "remote"
    start = time.perf_counter()
    exe = await RemoteExecutable._copy_bundle(target, str(directory), bare_python, bundle)
    took = time.perf_counter() - start
    assert exe.host == "127.0.0.1" and exe.path == str(directory / bundle.id)
    files = await exe.probe(["msgspec", "rpc_parallel", APP_MODULE])
    assert all(str(f).startswith(exe.path + "/lib/") for f in files.values()), files
    start = time.perf_counter()
    await asyncio.to_thread(subprocess.run, target.argv(["true"]), check=True, timeout=60)
    ssh_true = time.perf_counter() - start
    start = time.perf_counter()
    await exe.verify()
    print(f"over ssh: ssh true {ssh_true:.3f} s, verify {time.perf_counter() - start:.3f} s")
    # One ssh connection: verify, then run rpc_parallel's entry point from the bundle.
    run = await asyncio.to_thread(
        subprocess.run, target.argv(exe.python_argv()), input=exe.boot_input(["help"]),
        capture_output=True, timeout=60)
    assert run.returncode == 2 and b"usage: python -m rpc_parallel worker" in run.stderr
    tampered = file_of(exe, f"lib/{APP_MODULE}.py")
    tampered.write_text(tampered.read_text().replace("42", "43"))
    with pytest.raises(rp.SpawnError, match=f"host 127.0.0.1.*changed file lib/{APP_MODULE}.py"):
        await exe.verify()
    # The same, refused: the error names the file.
    run = await asyncio.to_thread(
        subprocess.run, target.argv(exe.python_argv()), input=exe.boot_input(["worker"]),
        capture_output=True, timeout=60)
    assert f"changed file lib/{APP_MODULE}.py" in str(exe.spawn_failure(run.returncode, run.stderr))
    await exe.delete()
    assert not directory.exists()
    with pytest.raises(rp.SpawnError, match=r"host 127\.0\.0\.1: exited with code 127: .*not found"):
        await RemoteExecutable._copy_bundle(target, str(directory), "rp-no-such-python", bundle)
    print(f"copy over ssh: {took:.2f} s")


async def test_shell_noise_on_the_hosts_stdout_is_ignored(
    bundle: Bundle, bare_python: str, tmp_path: Path
) -> None:
    """A login shell's rc file may print; only the bootstrap's answer lines count."""
    noisy = tmp_path / "noisy-python"
    noisy.write_text(f"#!/bin/sh\necho 'Welcome!'\necho 'RPBOOT1 not json'\nexec {bare_python} \"$@\"\n")
    noisy.chmod(0o755)
    exe = await copy(bundle, tmp_path / "bundles", str(noisy))
    await exe.verify()
    await exe.delete()


def test_a_module_from_a_zip_archive_is_refused_by_name(tmp_path: Path) -> None:
    archive = tmp_path / "modules.zip"
    import zipfile

    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("rp_exe_zipped.py", "X = 1\n")
    sys.path.insert(0, str(archive))
    try:
        module = __import__("rp_exe_zipped")
        with pytest.raises(rp.SpawnError, match=r"cannot ship module rp_exe_zipped: .*zip"):
            _pack.pack([module], None)
    finally:
        sys.path.remove(str(archive))
        sys.modules.pop("rp_exe_zipped", None)


async def test_a_missing_python_is_a_spawn_error(bundle: Bundle, tmp_path: Path) -> None:
    with pytest.raises(rp.SpawnError, match=r"cannot run /nonexistent/python3 for host localhost"):
        await copy(bundle, tmp_path, "/nonexistent/python3")


async def test_ssh_failures_name_the_host_and_ssh_stderr(tmp_path: Path) -> None:
    if shutil.which("ssh") is None:
        pytest.skip("OpenSSH client not installed")
    target = _ssh.SshTarget("127.0.0.1", port=_free_port(), ssh_options=("-F", "/dev/null"))
    with pytest.raises(rp.SpawnError, match=r"host 127\.0\.0\.1: ssh failed: .*refused") as caught:
        await RemoteExecutable._copy(target, str(tmp_path), "python3")
    assert "Connection refused" in caught.value.stderr_tail


async def test_a_host_command_that_exits_at_once_is_answered_not_a_crash(bundle: Bundle) -> None:
    """ssh that fails at once (host down, connection refused) closes its stdin before the
    request is written: the install reads the exit status and stderr, whatever the event
    loop (uvloop raises ``RuntimeError`` on a write to a closed pipe, asyncio drops it)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; sys.stderr.write('gone'); sys.stdin.close()",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdin is not None
    await process.wait()
    await poll(process.stdin.is_closing, 5.0, "the event loop to see the stdin pipe closed")
    completed = await RemoteExecutable._install(process, b"{}\n", bundle)
    assert completed.returncode == 0 and completed.stderr == b"gone"


async def test_the_public_api_from_an_application_over_ssh(
    bare_python: str, sshd: list[str], tmp_path: Path
) -> None:
    """An application script (not this pytest process) ships itself with the public API."""
    script = tmp_path / "ssh_app.py"
    (tmp_path / "ssh_app_helpers.py").write_text("ANSWER = 42\n")
    script.write_text(textwrap.dedent(f"""
        import asyncio, json, sys, time
        import rpc_parallel as rp
        import ssh_app_helpers

        async def main():
            options = {sshd!r}
            start = time.perf_counter()
            exe = await rp.RemoteExecutable.copy_to_host(
                "127.0.0.1", {str(tmp_path / "host")!r}, ssh_options=options,
                python={bare_python!r})
            took = time.perf_counter() - start
            again = await rp.RemoteExecutable.existing_on_host(
                "127.0.0.1", exe.path, ssh_options=options, python={bare_python!r})
            files = await again.probe(["ssh_app_helpers", "rpc_parallel", "msgspec"])
            main_file = exe.remote_file(__file__)
            await exe.delete()
            print(json.dumps({{"path": exe.path, "files": files, "took": took,
                              "main": main_file}}))

        asyncio.run(main())
    """))
    src = str(Path(rp.__file__).parent.parent)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, str(script)], capture_output=True, timeout=300,
        env={**os.environ, "PYTHONPATH": src})
    assert done.returncode == 0, done.stderr.decode()
    result = json.loads(done.stdout)
    assert all(f.startswith(result["path"] + "/lib/") for f in result["files"].values()), result
    assert result["main"] == result["path"] + "/main/ssh_app.py"
    assert not (tmp_path / "host").exists()
    print(f"copy of the whole application over ssh: {result['took']:.2f} s")
