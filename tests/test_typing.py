"""Static type safety with no plugin: mypy --strict and pyright on tests/typing/.

- ``tests/typing/accept/*.py`` must check with no error (and no pyright warning); they use
  ``assert_type`` to pin the result type of every kind of ``run``.
- ``tests/typing/reject/*.py`` mark misuse with a trailing ``# expect-error``: each checker
  must report an error on exactly those lines, and on no other line.

Both checkers run once over all the files (one subprocess each), from the interpreter running
the tests (the project's venv). Run ``python tests/test_typing.py`` for a readable diff.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tokenize
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
ACCEPT = sorted((TYPING / "accept").glob("*.py"))
REJECT = sorted((TYPING / "reject").glob("*.py"))
PYRIGHT_CONFIG = TYPING / "pyrightconfig.json"
EXPECT = re.compile(r"#\s*expect-error\b")
MYPY_LINE = re.compile(r"^(?P<path>[^:\n]+\.py):(?P<line>\d+)(?::\d+)?: (?P<severity>error|warning|note): (?P<message>.*)$")

Diagnostics = dict[Path, dict[int, list[str]]]


def expected_lines(path: Path) -> set[int]:
    """The lines whose comment is ``# expect-error`` (comments only, not strings)."""
    with tokenize.open(path) as source:
        return {
            token.start[0]
            for token in tokenize.generate_tokens(source.readline)
            if token.type == tokenize.COMMENT and EXPECT.match(token.string)
        }


def _run(command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@cache
def mypy_diagnostics() -> Diagnostics:
    """Errors mypy --strict reports in tests/typing, by file and line."""
    result = _run(
        [
            sys.executable, "-m", "mypy", "--strict", "--config-file", str(ROOT / "pyproject.toml"),
            "--no-error-summary", "--no-color-output", "--no-pretty", "--show-absolute-path",
            *map(str, ACCEPT + REJECT),
        ],
        timeout=300,
    )
    if result.returncode not in (0, 1):
        pytest.fail(f"mypy did not run (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    found: Diagnostics = defaultdict(lambda: defaultdict(list))
    for line in result.stdout.splitlines():
        match = MYPY_LINE.match(line)
        if match is None or match["severity"] == "note":
            continue
        found[Path(match["path"]).resolve()][int(match["line"])].append(match["message"])
    return found


@cache
def pyright_command() -> list[str] | str:
    """How to run pyright, or why it cannot run."""
    executable = shutil.which("pyright", path=str(Path(sys.executable).parent))
    command = [executable] if executable else [sys.executable, "-m", "pyright"]
    try:
        # The first run fetches pyright's npm package (pyright for PyPI is a thin wrapper).
        probe = _run([*command, "--version"], timeout=240)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"pyright cannot run: {error}"
    if probe.returncode != 0 or "pyright" not in probe.stdout:
        return (
            f"pyright is not installed in this environment or cannot start "
            f"(pip install -e '.[dev]'): {(probe.stdout + probe.stderr).strip()[-500:]}"
        )
    return command


@cache
def pyright_diagnostics() -> Diagnostics:
    """Errors (and, for accept files, warnings) pyright reports, by file and 1-based line."""
    command = pyright_command()
    if isinstance(command, str):
        pytest.skip(command)
    result = _run(
        [
            *command, "--outputjson", "--pythonpath", sys.executable,
            "-p", str(PYRIGHT_CONFIG), *map(str, ACCEPT + REJECT),
        ],
        timeout=300,
    )
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not run (exit {result.returncode}):\n{result.stdout}{result.stderr}")
    found: Diagnostics = defaultdict(lambda: defaultdict(list))
    for diagnostic in report["generalDiagnostics"]:
        path = Path(diagnostic["file"]).resolve()
        severity = diagnostic["severity"]
        if severity == "error" or (severity == "warning" and path in ACCEPT):
            line = diagnostic["range"]["start"]["line"] + 1
            rule = diagnostic.get("rule", "")
            found[path][line].append(f"{severity}: {diagnostic['message']} ({rule})")
    return found


def _describe(found: dict[int, list[str]], lines: set[int]) -> str:
    return "\n".join(f"  line {n}: {' | '.join(found.get(n, ['(none)']))}" for n in sorted(lines))


def accept_failures(found: Diagnostics, path: Path) -> str | None:
    errors = found.get(path, {})
    if not errors:
        return None
    return f"{path.relative_to(ROOT)} must check cleanly:\n{_describe(errors, set(errors))}"


def reject_failures(found: Diagnostics, path: Path) -> str | None:
    expected = expected_lines(path)
    reported = set(found.get(path, {}))
    missed, extra = expected - reported, reported - expected
    if not expected:
        return f"{path.relative_to(ROOT)} has no '# expect-error' line"
    if not missed and not extra:
        return None
    text = [f"{path.relative_to(ROOT)}:"]
    if missed:
        text.append("accepted, but marked # expect-error:")
        text += [f"  line {n}: {path.read_text().splitlines()[n - 1].strip()}" for n in sorted(missed)]
    if extra:
        text.append("errors on lines not marked # expect-error:")
        text.append(_describe(found[path], extra))
    return "\n".join(text)


CHECKERS = {"mypy": mypy_diagnostics, "pyright": pyright_diagnostics}

PINNED = re.compile(r"\b(mypy|pyright): (.*?)(?=\s+(?:mypy|pyright): |$)")
PRIVATE = re.compile(r"\b_[A-Za-z]\w*|overload variant")


def pinned_messages(path: Path) -> dict[int, dict[str, str]]:
    """The parts of messages a reject file pins after ``# expect-error``: ``mypy: text`` and
    ``pyright: text``, by line and checker."""
    pinned: dict[int, dict[str, str]] = {}
    with tokenize.open(path) as source:
        for token in tokenize.generate_tokens(source.readline):
            if token.type == tokenize.COMMENT and EXPECT.match(token.string):
                found = dict(PINNED.findall(token.string))
                if found:
                    pinned[token.start[0]] = found
    return pinned


def message_failures(found: Diagnostics, path: Path, checker: str) -> list[str]:
    """Pinned message parts missing, and private names or overload lists shown to users."""
    failures = []
    for line, pins in pinned_messages(path).items():
        said = " | ".join(found.get(path, {}).get(line, []))
        if checker in pins and pins[checker] not in said:
            failures.append(f"line {line}: expected {pins[checker]!r} in: {said}")
        if PRIVATE.search(said):
            failures.append(f"line {line}: a private name or an overload list in: {said}")
    return failures


def test_typing_files_exist() -> None:
    assert ACCEPT and REJECT
    # mypy checks them in one run as top-level modules: their names must not collide.
    stems = [path.stem for path in ACCEPT + REJECT]
    assert len(stems) == len(set(stems)), stems


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize("path", ACCEPT, ids=lambda p: p.name)
def test_accepted(checker: str, path: Path) -> None:
    failure = accept_failures(CHECKERS[checker](), path)
    assert failure is None, f"{checker}: {failure}"


@pytest.mark.parametrize("checker", CHECKERS)
@pytest.mark.parametrize("path", REJECT, ids=lambda p: p.name)
def test_rejected(checker: str, path: Path) -> None:
    failure = reject_failures(CHECKERS[checker](), path)
    assert failure is None, f"{checker}: {failure}"


@pytest.mark.parametrize("checker", CHECKERS)
def test_messages_of_common_mistakes(checker: str) -> None:
    """What mypy and pyright say about the common mistakes with ``run`` names the wrong
    argument or the result types, and only public things (#11.12)."""
    paths = [path for path in REJECT if pinned_messages(path)]
    assert paths
    failures = [f"{path.name} {text}" for path in paths
                for text in message_failures(CHECKERS[checker](), path, checker)]
    assert not failures, f"{checker}:\n" + "\n".join(failures)


if __name__ == "__main__":
    # python tests/test_typing.py: every file, both checkers, a readable report.
    status = 0
    for name, diagnostics in CHECKERS.items():
        try:
            found = diagnostics()
        except pytest.skip.Exception as skipped:
            print(f"{name}: skipped: {skipped}")
            continue
        for path in ACCEPT + REJECT:
            failure = (accept_failures if path in ACCEPT else reject_failures)(found, path)
            if failure:
                status = 1
                print(f"{name}: {failure}\n")
    print("ok" if status == 0 else "FAILED")
    sys.exit(status)
