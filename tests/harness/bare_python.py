"""A host Python with nothing installed: a fresh ``python -m venv --without-pip``.

It stands in for "a host that has only a compatible CPython": the same version as the
interpreter running the tests, with no msgspec, no rpc_parallel, not even pip.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import _proc


@dataclass
class BarePython:
    directory: Path
    """The temporary directory holding the venv (removed by ``stop()``)."""

    @property
    def python(self) -> Path:
        return self.directory / "venv" / "bin" / "python"

    @classmethod
    def create(cls) -> BarePython:
        directory = Path(tempfile.mkdtemp(prefix="rp-bare-python-"))
        directory.chmod(0o755)  # readable by any user a test runs it as
        bare = cls(directory)
        try:
            _proc.run([sys.executable, "-m", "venv", "--without-pip", str(directory / "venv")],
                      timeout=120)
        except BaseException:
            bare.stop()
            raise
        return bare

    def stop(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> BarePython:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
