"""Pack the running application into a bundle: which files, their hashes, the manifest.

A bundle is a directory tree: ``lib/`` (one import root: the files of the installed
distributions the application needs, the top-level packages of its own modules, and
unchecked-hash ``.pyc`` files compiled here) and ``main/`` (the main script when it is not in
``lib/``). The manifest lists every file (relative path, size, sha256) and the Python the
bundle needs; the bundle's id is the sha256 of the canonical manifest. See
docs/decisions/0014-remote-executable.md for how the distributions are chosen.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as metadata
import importlib.util
import json
import marshal
import os
import re
import site
import sys
import sysconfig
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from ..errors import SpawnError

LIB = "lib"
MAIN = "main"
FORMAT = 1

ALWAYS = ("rpc_parallel",)
"""Distributions every bundle carries (with their ``Requires-Dist`` closure)."""
IF_INSTALLED = ("uvloop", "cryptography")
"""Optional distributions rpc_parallel uses when present (the fast loop, TLS keys)."""
STARTUP_MODULES = ("_distutils_hack", "_virtualenv", "sitecustomize", "usercustomize")
"""Imported by ``.pth`` files or ``site`` at start-up; the bundle's python runs without them."""
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_COMPILED_SUFFIXES = (".so", ".pyd", ".dylib")


@dataclass
class Bundle:
    """The packed application: its files (by bundle path) and manifest."""

    sources: dict[str, Path | bytes]
    """Each bundle path's content: a local file, or bytes made here (``.pyc`` files)."""
    manifest: bytes
    id: str
    local_paths: dict[str, str] = field(default_factory=dict)
    """Local absolute path -> bundle path, to find a shipped file (the main script) remotely."""
    distributions: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(entry[1] for entry in json.loads(self.manifest)["files"])


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, metadata.Distribution]:
    found: dict[str, metadata.Distribution] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(_norm(name), dist)  # The first on sys.path is the one imported.
    return found


def _requirements(dist: metadata.Distribution) -> Iterator[str]:
    """Names from ``Requires-Dist`` that are not behind an extra (markers otherwise ignored:
    the closure is restricted to what is installed, so a false marker costs only size)."""
    for requirement in dist.requires or ():
        name, _, marker = requirement.partition(";")
        if "extra" in marker:
            continue
        match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", name)
        if match:
            yield _norm(match.group(1))


def _closure(seeds: Iterable[str], installed: Mapping[str, metadata.Distribution]) -> list[str]:
    chosen: list[str] = []
    todo = [name for name in seeds if name in installed]
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        chosen.append(name)
        todo += [req for req in _requirements(installed[name]) if req in installed]
    return sorted(chosen)


def _prefixes(paths: Iterable[str]) -> tuple[str, ...]:
    return tuple(os.path.realpath(p) + os.sep for p in paths if p)


def _site_dirs() -> tuple[str, ...]:
    paths = [*site.getsitepackages(), site.getusersitepackages()]
    paths += [sysconfig.get_paths()[key] for key in ("purelib", "platlib")]
    return _prefixes(paths)


def _stdlib_dirs() -> tuple[str, ...]:
    return _prefixes(sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib"))


def _path_entry(file: str) -> str | None:
    """The longest ``sys.path`` directory that holds ``file``."""
    best: str | None = None
    for entry in sys.path:
        real = os.path.realpath(entry or os.getcwd())
        if file.startswith(real + os.sep) and (best is None or len(real) > len(best)):
            best = real
    return best


@dataclass
class _Selection:
    distributions: set[str] = field(default_factory=set)
    trees: dict[str, str] = field(default_factory=dict)
    """Top-level name -> local file or directory shipped whole (own and editable modules)."""


class _Owners:
    """Which installed distribution a module file belongs to (by its ``RECORD``)."""

    def __init__(self, installed: Mapping[str, metadata.Distribution]) -> None:
        self.installed = installed
        self.by_top = metadata.packages_distributions()
        self.files: dict[str, set[str]] = {}

    def _files(self, name: str) -> set[str]:
        if name not in self.files:
            dist = self.installed[name]
            self.files[name] = {os.path.realpath(str(dist.locate_file(f))) for f in dist.files or ()}
        return self.files[name]

    def owner(self, module: str, file: str) -> str | None:
        for name in map(_norm, self.by_top.get(module.partition(".")[0], [])):
            if name in self.installed and file in self._files(name):
                return name
        return None


def _select(modules: Iterable[ModuleType], installed: Mapping[str, metadata.Distribution]) -> _Selection:
    wanted = {_norm(n) for n in (*ALWAYS, *IF_INSTALLED)}
    selection = _Selection(distributions={n for n in wanted if n in installed})
    stdlib, sites = _stdlib_dirs(), _site_dirs()
    owners = _Owners(installed)
    for module in modules:
        name = module.__name__
        file = getattr(module, "__file__", None)
        top = name.partition(".")[0]
        if file is None or name in ("__main__", "__mp_main__") or top in STARTUP_MODULES:
            continue
        if top.startswith("__editable__") or top in selection.trees:
            continue
        file = os.path.realpath(file)
        in_site = file.startswith(sites)
        if file.startswith(stdlib) and not in_site:
            continue
        owner = owners.owner(name, file) if in_site else None
        if owner is not None:
            selection.distributions.add(owner)
            continue
        entry = _path_entry(file)
        if entry is None:
            raise SpawnError(f"cannot ship module {name}: {file} is on no sys.path entry")
        tree = os.path.join(entry, os.path.relpath(file, entry).split(os.sep)[0])
        if not os.path.isfile(file) or not os.path.exists(tree):
            raise SpawnError(f"cannot ship module {name}: {file} is not a file on disk "
                             "(modules from zip archives or other loaders cannot be shipped)")
        selection.trees[top] = tree
    return selection


def _tree_files(path: str) -> Iterator[tuple[str, Path]]:
    """Files of a shipped top-level package (or the one file of a module), by relative path."""
    base = os.path.dirname(path)
    if os.path.isfile(path):
        yield os.path.basename(path), Path(path)
        return
    for directory, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith((".pyc", ".pyo")) and not name.startswith("."):
                full = os.path.join(directory, name)
                yield os.path.relpath(full, base).replace(os.sep, "/"), Path(full)


def _distribution_files(dist: metadata.Distribution) -> Iterator[tuple[str, Path]]:
    for file in dist.files or ():
        parts = file.parts
        if ".." in parts or "__pycache__" in parts or file.suffix in (".pyc", ".pth"):
            continue  # Scripts and data outside the import root; start-up hooks; caches.
        path = Path(str(dist.locate_file(file)))
        if path.is_file():
            yield "/".join(parts), path


def _pyc(source: bytes, relpath: str) -> bytes | None:
    """An unchecked-hash pyc (PEP 552): our manifest check is what guarantees it matches."""
    try:
        code = compile(source, relpath, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None  # Files a package ships but never imports (templates, old tests).
    flags = (0b01).to_bytes(4, "little")
    return importlib.util.MAGIC_NUMBER + flags + importlib.util.source_hash(source) + marshal.dumps(code)


def _cache_path(relpath: str) -> str:
    directory, _, name = relpath.rpartition("/")
    pyc = f"__pycache__/{name[:-3]}.{sys.implementation.cache_tag}.pyc"
    return f"{directory}/{pyc}" if directory else pyc


def _python() -> dict[str, object]:
    return {
        "implementation": sys.implementation.name,
        "version": [sys.version_info[0], sys.version_info[1]],
        "platform": sysconfig.get_platform(),
        "soabi": sysconfig.get_config_var("SOABI") or "",
        "byteorder": sys.byteorder,
    }


def _add(sources: dict[str, Path | bytes], local: dict[str, str], relpath: str, path: Path) -> None:
    if relpath in sources:
        return  # Shared directories of namespace packages: the first on sys.path wins.
    sources[relpath] = path
    local[os.path.realpath(path)] = relpath
    if relpath.endswith(".py") and sys.implementation.cache_tag:
        pyc = _pyc(path.read_bytes(), relpath)
        if pyc is not None:
            sources[_cache_path(relpath)] = pyc


def _digest(content: Path | bytes) -> tuple[int, str]:
    if isinstance(content, bytes):
        return len(content), hashlib.sha256(content).hexdigest()
    digest = hashlib.sha256()
    with content.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return content.stat().st_size, digest.hexdigest()


def pack(modules: Iterable[ModuleType], main: str | None) -> Bundle:
    """Pack ``modules`` (their distributions or top-level packages) and the main script."""
    installed = _installed()
    import rpc_parallel  # Always shipped, from wherever it is imported (editable or not).

    selection = _select([rpc_parallel, *modules], installed)
    names = _closure(selection.distributions, installed)
    sources: dict[str, Path | bytes] = {}
    local: dict[str, str] = {}
    for top in sorted(selection.trees):
        for relpath, path in _tree_files(selection.trees[top]):
            _add(sources, local, f"{LIB}/{relpath}", path)
    for name in names:
        for relpath, path in _distribution_files(installed[name]):
            _add(sources, local, f"{LIB}/{relpath}", path)
    if main is not None and os.path.realpath(main) not in local:
        _add(sources, local, f"{MAIN}/{os.path.basename(main)}", Path(main))
    files = [[relpath, *_digest(sources[relpath])] for relpath in sorted(sources)]
    compiled = any(relpath.endswith(_COMPILED_SUFFIXES) or ".so." in relpath for relpath in sources)
    manifest = json.dumps(
        {"format": FORMAT, "python": _python(), "compiled": compiled, "files": files,
         "distributions": names, "lib": LIB},
        sort_keys=True, separators=(",", ":"), ensure_ascii=True,
    ).encode()
    return Bundle(sources, manifest, hashlib.sha256(manifest).hexdigest(), local, names)


_cached: Bundle | None = None


def application_bundle() -> Bundle:
    """The running application's bundle, packed once per process."""
    global _cached
    if _cached is None:
        main = getattr(sys.modules.get("__main__"), "__file__", None)
        _cached = pack(list(sys.modules.values()), main)
    return _cached
