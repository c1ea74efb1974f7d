"""The host side of a shipped executable: install, verify, probe, run, delete.

This file is never imported on the host. The master reads its source and sends it over ssh's
standard input to a tiny stub (``STUB``) that the remote ``python -I -S -B -c`` executes; the
stub passes it a reader of exact byte counts (``_read``). It uses the standard library only,
and keeps to syntax old Pythons parse, so that a host with the wrong Python still gets a clear
message naming both sides instead of a syntax error.

Protocol, after the bootstrap source: a 4-byte little-endian length and a JSON request
``{"action", "root", "id", "manifest"?, ...}``. Answers of every action but ``run`` are one
line on stdout, ``RPBOOT1 <json>``, after which the process exits; a failure of ``run`` is one
line on stderr starting ``rpc_parallel bundle:`` and exit status ``EXIT_REFUSED``. ``run``
leaves stdin to the worker, which reads its configuration next.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import sys
import sysconfig
from collections.abc import Callable
from typing import Any

EXIT_REFUSED = 78
ANSWER_PREFIX = "RPBOOT1 "
MANIFEST = "manifest.json"
LIB = "lib"

STUB = (
    "import os,sys;"
    "r=lambda n,b=b'':b if len(b)>=n else r(n,b+(os.read(0,n-len(b))"
    " or sys.exit('rpc_parallel bundle: stdin closed before the request')));"
    "exec(compile(r(int.from_bytes(r(4),'little')),'<rpc_parallel bootstrap>','exec'),"
    "{'__name__':'__rp_boot__','_read':r})"
)
"""What the remote python runs from its command line (``-c``): read the bootstrap, run it.
One line without ``!`` or newlines, so that any login shell passes it through quoted."""


class Refused(Exception):
    """The bundle cannot be used on this host; the message names the file or both sides."""


def _host_python() -> dict[str, Any]:
    return {
        "implementation": sys.implementation.name,
        "version": [sys.version_info[0], sys.version_info[1]],
        "platform": sysconfig.get_platform(),
        "soabi": sysconfig.get_config_var("SOABI") or "",
        "byteorder": sys.byteorder,
        "executable": sys.executable,
    }


def _describe(python: dict[str, Any]) -> str:
    version = ".".join(str(part) for part in python["version"])
    return "{} {} ({}, {})".format(
        python["implementation"], version, python["platform"], python["soabi"] or "no SOABI"
    )


def check_python(manifest: dict[str, Any]) -> None:
    """Refuse a host Python that cannot load the bundle, naming both sides."""
    need = manifest["python"]
    have = _host_python()
    keys = ["implementation", "version"]
    if manifest["compiled"]:
        keys += ["platform", "soabi", "byteorder"]
    differs = [key for key in keys if need[key] != have[key]]
    if differs:
        raise Refused(
            "bundle {} needs {}; host {} runs {} = {} (differs in {})".format(
                manifest_id_short(manifest), _describe(need), socket.gethostname(),
                have["executable"], _describe(have), ", ".join(differs),
            )
        )


def manifest_id_short(manifest: dict[str, Any]) -> str:
    return str(manifest.get("_id", "?"))[:12]


def load_manifest(text: str, expected_id: str) -> dict[str, Any]:
    """Parse a manifest after checking that its sha256 is the id the master holds."""
    actual = hashlib.sha256(text.encode()).hexdigest()
    if actual != expected_id:
        raise Refused(f"bundle manifest changed: {MANIFEST} has sha256 {actual[:12]}, "
                      f"the master expects {expected_id[:12]}")
    manifest: dict[str, Any] = json.loads(text)
    manifest["_id"] = expected_id
    return manifest


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while True:
            chunk = file.read(1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def _listing(root: str) -> dict[str, os.stat_result]:
    """Every non-directory entry under ``root`` (symlinks not followed), by relative path."""
    found: dict[str, os.stat_result] = {}
    for directory, dirnames, filenames in os.walk(root):
        names = list(filenames) + [d for d in dirnames if os.path.islink(os.path.join(directory, d))]
        for name in names:
            path = os.path.join(directory, name)
            found[os.path.relpath(path, root).replace(os.sep, "/")] = os.lstat(path)
    found.pop(MANIFEST, None)
    return found


def verify_tree(root: str, manifest: dict[str, Any]) -> None:
    """Every shipped file is there with its hash, and nothing was added."""
    listing = _listing(root)
    problems: list[str] = []
    for relpath, size, sha256 in manifest["files"]:
        status = listing.pop(relpath, None)
        if status is None:
            problems.append("missing file " + relpath)
        elif not (status.st_mode & 0o170000 == 0o100000 and status.st_size == size
                  and _file_sha256(os.path.join(root, relpath)) == sha256):
            problems.append("changed file " + relpath)
    problems += ["added file " + relpath for relpath in sorted(listing)]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise Refused("bundle at {} on host {} does not match its manifest: {}{}".format(
            root, socket.gethostname(), "; ".join(problems[:5]), more))


def _read_manifest(root: str, expected_id: str) -> dict[str, Any]:
    try:
        with open(os.path.join(root, MANIFEST), encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise Refused(f"no bundle {expected_id[:12]} at {root} on host "
                      f"{socket.gethostname()}: {error.strerror}") from None
    return load_manifest(text, expected_id)


def verified(root: str, expected_id: str) -> dict[str, Any]:
    manifest = _read_manifest(root, expected_id)
    check_python(manifest)
    verify_tree(root, manifest)
    return manifest


def _stdlib() -> list[str]:
    """This python's own import path (run with ``-I -S``: its standard library only)."""
    return [p for p in sys.path if p]


def use_bundle(root: str) -> None:
    """Import from the bundle and the interpreter's standard library, nothing else."""
    sys.path[:] = [os.path.join(root, LIB)] + [p for p in sys.path if p]
    os.environ["RPC_PARALLEL_BUNDLE"] = root


def _answer(**fields: Any) -> None:
    sys.stdout.write(ANSWER_PREFIX + json.dumps(fields) + "\n")
    sys.stdout.flush()


def _extract(source: Any, target: str) -> None:
    import tarfile

    with tarfile.open(fileobj=source, mode="r|") as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(target, filter="data")
            return
        for member in archive:  # Pythons before the extraction filters: regular files only
            name = member.name
            if not member.isfile() or name.startswith("/") or ".." in name.split("/"):
                raise Refused("unsafe entry in the bundle stream: " + name)
            archive.extract(member, target)


def _intact(root: str, expected_id: str) -> bool:
    """An identical bundle is already at ``root`` (a damaged one is replaced by install)."""
    if not os.path.isdir(root):
        return False
    try:
        verify_tree(root, _read_manifest(root, expected_id))
    except Refused:
        return False
    return True


def _missing_ancestors(path: str) -> list[str]:
    """The directories ``os.makedirs(path)`` will make, deepest first."""
    missing: list[str] = []
    while not os.path.isdir(path) and path != os.path.dirname(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def install(request: dict[str, Any]) -> None:
    """Extract the tar stream that follows into a staging directory, verify, rename."""
    root = os.path.abspath(os.path.expanduser(request["root"]))
    manifest = load_manifest(request["manifest"], request["id"])
    check_python(manifest)
    parent = os.path.dirname(root)
    created = _missing_ancestors(parent)
    if _intact(root, request["id"]):
        _answer(status="present", root=root, created=[], stdlib=_stdlib())
        return
    _answer(status="send", root=root)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    import tempfile

    staging = tempfile.mkdtemp(prefix=".rp-staging-", dir=parent)
    try:
        _extract(os.fdopen(0, "rb", buffering=0, closefd=False), staging)
        with open(os.path.join(staging, MANIFEST), "w", encoding="utf-8") as file:
            file.write(request["manifest"])
        try:
            verify_tree(staging, manifest)
        except Refused as error:
            raise Refused(f"{error} (did a file change on the master since it was packed?)") from None
        _place(staging, root, request["id"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _answer(status="installed", root=root, created=created, stdlib=_stdlib())


def _place(staging: str, root: str, expected_id: str) -> None:
    """Rename the verified staging directory to ``root``, replacing a damaged copy; a copy
    another master finished meanwhile is kept (staging is then removed by the caller)."""
    if _intact(root, expected_id):
        return
    if os.path.isdir(root):
        old = staging + ".old"
        os.rename(root, old)
        shutil.rmtree(old, ignore_errors=True)
    try:
        os.rename(staging, root)
    except OSError:
        if not _intact(root, expected_id):
            raise


def delete(request: dict[str, Any]) -> None:
    """Remove the manifest's files and the directories they leave empty, nothing else."""
    root = os.path.abspath(os.path.expanduser(request["root"]))
    manifest = load_manifest(request["manifest"], request["id"])
    directories = {root}
    for relpath in [entry[0] for entry in manifest["files"]] + [MANIFEST]:
        path = os.path.join(root, relpath)
        if (os.path.lexists(path) and not os.path.isdir(path)) or os.path.islink(path):
            os.unlink(path)
        parent = os.path.dirname(path)
        while parent.startswith(root + os.sep):
            directories.add(parent)
            parent = os.path.dirname(parent)
    for directory in sorted(directories, key=len, reverse=True) + list(request["created"]):
        with contextlib.suppress(OSError):  # Not empty (not only the bundle's), or gone.
            os.rmdir(directory)
    _answer(status="deleted", root=root, left=os.path.exists(root))


def probe(request: dict[str, Any]) -> None:
    """Verify, then import modules from the bundle and report where each came from."""
    root = os.path.abspath(os.path.expanduser(request["root"]))
    verified(root, request["id"])
    use_bundle(root)
    import importlib

    files = {}
    for name in request["modules"]:
        files[name] = getattr(importlib.import_module(name), "__file__", None)
    _answer(status="ok", files=files, sys_path=sys.path)


def run(request: dict[str, Any]) -> None:
    """Verify, then become ``python -m rpc_parallel <argv>`` importing from the bundle."""
    root = os.path.abspath(os.path.expanduser(request["root"]))
    verified(root, request["id"])
    use_bundle(root)
    import runpy

    sys.argv = ["rpc_parallel", *request["argv"]]
    runpy.run_module("rpc_parallel", run_name="__main__", alter_sys=True)


def main(read: Callable[[int], bytes]) -> None:
    request: dict[str, Any] = json.loads(read(int.from_bytes(read(4), "little")))
    action = request["action"]
    try:
        if action == "install":
            install(request)
        elif action == "delete":
            delete(request)
        elif action == "verify":
            root = os.path.abspath(os.path.expanduser(request["root"]))
            verified(root, request["id"])
            _answer(status="ok", root=root, stdlib=_stdlib())
        elif action == "probe":
            probe(request)
        elif action == "run":
            run(request)
        else:
            raise Refused("unknown bootstrap action " + repr(action))
    except (Refused, OSError) as error:
        message = str(error)
        if not isinstance(error, Refused):
            message = f"{action} on host {socket.gethostname()}: {error}"
        if action == "run":
            sys.stderr.write("rpc_parallel bundle: " + message + "\n")
            sys.stderr.flush()
        else:
            _answer(status="error", message=message)
        sys.exit(EXIT_REFUSED)


if __name__ == "__rp_boot__":
    main(globals()["_read"])
