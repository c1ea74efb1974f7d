"""#11.1: forwarded output never loses a byte, whatever the line length or encoding.

Lines of 0, 64Ki-1, 64Ki, 64Ki+1 and 1Mi bytes, a line that is not UTF-8, and a last line
without a newline, written by a worker to its stdout and to its stderr, forwarded to the
master (a real master process whose output the test captures) and written to a file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .support import run_program, write_program

LINES = [
    b"",
    b"a" * (64 * 1024 - 1),
    b"b" * (64 * 1024),
    b"c" * (64 * 1024 + 1),
    b"d" * (1024 * 1024),
    b"not utf-8: \xff\xfe\xc3( end",
]
TAIL = b"no newline at the end"
PAYLOAD = b"".join(line + b"\n" for line in LINES) + TAIL

MASTER = """
import sys
import rpc_parallel as rp
from tests.newuser.workers import Printer
from tests.newuser.test_output import PAYLOAD

async def main() -> None:
    fd, where = int(sys.argv[1]), sys.argv[2]
    options = {}
    if where != "forward":
        key = "redirect_stdout" if fd == 1 else "redirect_stderr"
        options[key] = rp.FileTruncate(where)
    async with await Printer.spawn(None, name="w", **options) as w:
        await w.run(Printer.emit, PAYLOAD, fd)

if __name__ == "__main__":
    rp.start_app(main)
"""

STREAMS = [pytest.param(1, id="stdout"), pytest.param(2, id="stderr")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fd", STREAMS)
async def test_forwarded_output_loses_no_byte(tmp_path: Path, fd: int) -> None:
    ran = await run_program(write_program(tmp_path, "master.py", MASTER), str(fd), "forward",
                            timeout=45.0)
    assert ran.returncode == 0, ran.err[-3000:]
    captured = ran.stdout if fd == 1 else ran.stderr
    for line in LINES:
        assert b"[w] " + line + b"\n" in captured, (
            f"line of {len(line)} bytes {line[:20]!r} not forwarded whole")
    assert b"[w] " + TAIL in captured, "the last line (no newline) was lost"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fd", STREAMS)
async def test_output_to_a_file_loses_no_byte(tmp_path: Path, fd: int) -> None:
    target = tmp_path / "out.bin"
    ran = await run_program(write_program(tmp_path, "master.py", MASTER), str(fd), str(target),
                            timeout=45.0)
    assert ran.returncode == 0, ran.err[-3000:]
    assert PAYLOAD in target.read_bytes()
