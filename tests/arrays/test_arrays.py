"""numpy arrays and scalars as declared parameter and result types, through real workers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import rpc_parallel as rp

from .workers import Arrays, Pair

QUIET = {"redirect_stdout": rp.DevNull(), "redirect_stderr": rp.DevNull()}

SAMPLES = [
    np.arange(12, dtype=np.float64).reshape(3, 4),
    np.linspace(0, 1, 7, dtype=np.float32),
    np.arange(-5, 5, dtype=np.int8),
    np.array([0, 2**64 - 1], dtype=np.uint64),
    np.array([True, False, True]),
    np.array([1 + 2j, -3j], dtype=np.complex128),
    np.arange(6, dtype=">f8").reshape(2, 3),  # big-endian stays big-endian
    np.arange(4, dtype=">i4"),
    np.array(["a", "héllo"], dtype="U5"),
    np.array([b"ab", b"xyz"], dtype="S3"),
    np.array(["2024-01-02T03:04:05.123456789"], dtype="datetime64[ns]"),
    np.array([(1, 2.5), (3, -1.0)], dtype=[("id", "<i4"), ("weight", ">f8")]),
    np.array(3.5),  # 0-d
    np.zeros((0, 3)),  # empty
    np.arange(24, dtype=np.int16).reshape(2, 3, 4),
]


def _same(a: np.ndarray, b: np.ndarray) -> None:  # type: ignore[type-arg]
    assert a.dtype == b.dtype and a.dtype.str == b.dtype.str
    assert a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def test_importing_rpc_parallel_does_not_import_numpy() -> None:
    code = "import sys, rpc_parallel; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.timeout(60)
async def test_round_trips_keep_dtype_shape_and_values() -> None:
    async with await Arrays.spawn(None, **QUIET) as w:
        for sample in SAMPLES:
            back = await w.run(Arrays.echo, sample)
            _same(back, sample)
            assert back.flags.writeable
            described = await w.run(Arrays.describe, sample)
            assert described == (sample.dtype.str, list(sample.shape), False, True)


@pytest.mark.timeout(60)
async def test_memory_order_and_strided_views() -> None:
    async with await Arrays.spawn(None, **QUIET) as w:
        fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
        assert (await w.run(Arrays.describe, fortran))[2] is True
        back = await w.run(Arrays.echo_f64, fortran)
        _same(back, fortran)
        assert back.flags.f_contiguous and not back.flags.c_contiguous
        strided = np.arange(40.0).reshape(4, 10)[::2, 1::3]  # neither C nor F contiguous
        back = await w.run(Arrays.echo_f64, strided)
        _same(back, strided)
        assert back.flags.c_contiguous


@pytest.mark.timeout(60)
async def test_declared_dtype_is_checked_both_ways() -> None:
    async with await Arrays.spawn(None, **QUIET) as w:
        with pytest.raises(rp.ProtocolError) as refused:
            await w.run(Arrays.echo_f64, np.arange(3, dtype=np.int32))  # type: ignore[arg-type]
        message = str(refused.value)
        assert "Arrays.echo_f64" in message and "argument 'a'" in message
        assert "expected an array of dtype float64" in message and "dtype int32" in message
        with pytest.raises(rp.ProtocolError) as refused:
            await w.run(Arrays.echo_f64, [1.0, 2.0])  # type: ignore[arg-type]
        assert "expected a numpy array, got a value of type list" in str(refused.value)
        with pytest.raises(rp.ProtocolError) as refused:
            await w.run(Arrays.wrong_result)
        message = str(refused.value)
        assert "result" in message and "float64" in message and "int32" in message
        assert await w.run(Arrays.floating, np.ones(2, dtype=np.float16)) == "float16"
        with pytest.raises(rp.ProtocolError, match="dtype floating, got an array of dtype int8"):
            await w.run(Arrays.floating, np.ones(2, dtype=np.int8))  # type: ignore[arg-type]
        # Plain np.ndarray takes any dtype; the worker still serves.
        _same(await w.run(Arrays.echo, np.arange(3, dtype=np.int32)), np.arange(3, dtype=np.int32))


@pytest.mark.timeout(60)
async def test_object_arrays_are_refused_clearly() -> None:
    async with await Arrays.spawn(None, **QUIET) as w:
        with pytest.raises(rp.ProtocolError) as refused:
            await w.run(Arrays.echo, np.array([{"a": 1}], dtype=object))
        assert "dtype object cannot be sent" in str(refused.value)
        with pytest.raises(rp.ProtocolError) as refused:
            await w.run(Arrays.objects)
        assert "dtype object cannot be sent" in str(refused.value)
        assert await w.run(Arrays.as_int, 3) == 3


@pytest.mark.timeout(60)
async def test_numpy_scalars() -> None:
    async with await Arrays.spawn(None, **QUIET) as w:
        i, f, b, c, types = await w.run(
            Arrays.scalars, np.int16(-7), np.float32(0.25), np.bool_(True), np.complex128(1 - 2j)
        )
        assert types == "int16,float32,bool,complex128"
        assert (type(i), type(f), type(b), type(c)) == (np.int16, np.float32, np.bool_, np.complex128)
        assert (i, f, b, c) == (-7, 0.25, True, 1 - 2j)
        total = await w.run(Arrays.total, np.ones(4))
        assert type(total) is np.float64 and total == 4.0
        # numpy integers pass where int is declared, as before.
        assert await w.run(Arrays.as_int, np.int64(5)) == 5
        with pytest.raises(rp.ProtocolError, match="int16, got 70000, which it cannot hold"):
            await w.run(Arrays.scalars, 70000, np.float32(1), np.bool_(False), np.complex128(0))  # type: ignore[arg-type]
        with pytest.raises(rp.ProtocolError, match=r"float32, got 0\.1, which it cannot hold exactly"):
            await w.run(Arrays.scalars, np.int16(1), 0.1, np.bool_(False), np.complex128(0))  # type: ignore[arg-type]


@pytest.mark.timeout(60)
async def test_arrays_inside_structs_any_and_streams() -> None:
    async with await Arrays.spawn(None, **QUIET) as w:
        pair = await w.run(Arrays.pair, Pair("x", np.arange(3, dtype=np.int32)))
        assert pair.label == "x!"
        _same(pair.values, np.array([0, 2, 4], dtype=np.int32))
        with pytest.raises(rp.ProtocolError, match="dtype int32, got an array of dtype int64"):
            await w.run(Arrays.pair, Pair("x", np.arange(3, dtype=np.int64)))
        mixed = await w.run(Arrays.anything, {"a": np.arange(2.0), "b": [np.int8(3)]})
        _same(mixed["a"], np.arange(2.0))
        assert mixed["b"] == [3]
        reader = await w.run(Arrays.blocks, 1000, 5)
        blocks = [block async for block in reader]
        assert [float(block[0]) for block in blocks] == [0.0, 1.0, 2.0, 3.0, 4.0]
