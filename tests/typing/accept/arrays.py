# pyright: strict
"""numpy arrays and scalars as parameter and result types."""

from __future__ import annotations

from typing import assert_type

import numpy as np
import numpy.typing as npt

import rpc_parallel as rp


class Science(rp.Worker[None]):
    @rp.rpc
    async def scale(self, a: npt.NDArray[np.float64], factor: np.float64) -> npt.NDArray[np.float64]:
        return a * factor

    @rp.rpc
    async def count(self, a: npt.NDArray[np.int32]) -> np.int64:
        return np.int64(a.size)


async def use(w: rp.WorkerHandle[Science]) -> None:
    scaled = await w.run(Science.scale, np.ones(3), np.float64(2.0))
    assert_type(scaled, npt.NDArray[np.float64])
    counted = await w.run(Science.count, np.arange(3, dtype=np.int32))
    assert_type(counted, np.int64)
