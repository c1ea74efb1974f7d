"""Runs every runnable snippet of docs/guide.md as a program of its own.

A snippet is a fenced block opened by a line that is exactly ```` ```python ````; blocks
opened with ```` ```python no-run ```` (fragments, type errors) are skipped. Each snippet is
written to a temporary file and run with this interpreter; it must exit with status 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
TIMEOUT = 60.0

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def _heading_before(text: str, position: int) -> str:
    headings = re.findall(r"^#+ (.+)$", text[:position], re.MULTILINE)
    return headings[-1] if headings else "top"


def snippets() -> list[tuple[str, int, str]]:
    """(heading, line number, code) of every runnable snippet, in order."""
    text = GUIDE.read_text()
    found = []
    for match in _FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        found.append((_heading_before(text, match.start()), line, match.group(1)))
    return found


def _id(snippet: tuple[str, int, str]) -> str:
    heading, line, _ = snippet
    slug = re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")[:40]
    return f"line{line}-{slug}"


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


SNIPPETS = snippets()


def test_the_guide_has_snippets() -> None:
    text = GUIDE.read_text()
    assert len(SNIPPETS) >= 10
    # Every python fence is either runnable or explicitly marked no-run.
    openings = re.findall(r"^```python(.*)$", text, re.MULTILINE)
    assert all(rest.strip() in ("", "no-run") for rest in openings), openings


@pytest.mark.timeout(TIMEOUT + 15)
@pytest.mark.parametrize("snippet", SNIPPETS, ids=[_id(s) for s in SNIPPETS])
def test_snippet_runs(snippet: tuple[str, int, str], tmp_path: Path) -> None:
    heading, line, code = snippet
    script = tmp_path / f"snippet_line{line}.py"
    script.write_text(code)
    environment = dict(os.environ)
    environment.pop("RPC_PARALLEL_RPC_SETTINGS", None)
    try:
        result = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=environment,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the snippet at docs/guide.md line {line} ({heading}) ran over "
                    f"{TIMEOUT:g} s\n--- stdout ---\n{_text(error.stdout)}\n"
                    f"--- stderr ---\n{_text(error.stderr)}")
    assert result.returncode == 0, (
        f"the snippet at docs/guide.md line {line} ({heading}) exited with "
        f"{result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


@pytest.mark.timeout(TIMEOUT * 2)
def test_snippets_type_check(tmp_path: Path) -> None:
    """The guide's programs pass ``mypy --strict`` (its misuse examples are marked no-run)."""
    pytest.importorskip("mypy")
    for _, line, code in SNIPPETS:
        (tmp_path / f"snippet_line{line}.py").write_text(code)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
         str(tmp_path)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
    )
    assert result.returncode == 0, result.stdout + result.stderr
