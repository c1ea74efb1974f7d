"""numpy arrays as the inputs, outputs, accumulators and ``param`` of ``rp.map_reduce``
functions: batches travel with the same codec as calls (arrays in band inside a batch)."""

from __future__ import annotations

import numpy as np
import pytest

import rpc_parallel as rp
from rpc_parallel import map_reduce as mr

from .workers import Norm, Shift, Stack

TWO = mr.Config(local=2)


@pytest.mark.timeout(120)
async def test_map_with_arrays_in_and_out() -> None:
    rng = np.random.default_rng(3)
    inputs = [rng.random((i % 7 + 1, 3)) for i in range(40)]
    inputs[5] = np.asfortranarray(rng.random((50_000, 3)))  # 1.2 MB, column-major
    inputs[9] = rng.random((40, 9))[::3, ::3]  # strided
    offset = np.array([1.0, 2.0, 3.0])
    out = [y async for y in mr.map(TWO, inputs, Shift, offset)]
    assert len(out) == len(inputs)
    for x, y in zip(inputs, out, strict=True):
        np.testing.assert_array_equal(y, x + offset)
        assert y.dtype == np.float64 and y.flags.writeable
    norms = [y async for y in mr.map(TWO, inputs, Norm, None)]
    assert norms == pytest.approx([float(np.sqrt((x * x).sum())) for x in inputs])
    assert all(isinstance(n, np.float64) for n in norms)


@pytest.mark.timeout(120)
async def test_map_reduce_with_array_accumulators() -> None:
    inputs = [np.arange(i, i + 3, dtype=np.int64) for i in range(0, 600, 3)]
    stacked = await mr.map_reduce(TWO, inputs, Stack, None)
    np.testing.assert_array_equal(stacked, np.arange(600))
    big = [np.full(200_000, i, dtype=np.int64) for i in range(6)]  # 1.6 MB each
    stacked = await mr.map_reduce(TWO, big, Stack, None)
    np.testing.assert_array_equal(stacked, np.concatenate(big))


@pytest.mark.timeout(120)
async def test_a_wrong_dtype_is_refused_by_name() -> None:
    with pytest.raises(rp.ProtocolError, match="float64"):
        [y async for y in mr.map(TWO, [np.arange(3)], Shift, np.zeros(3))]  # int64 inputs
