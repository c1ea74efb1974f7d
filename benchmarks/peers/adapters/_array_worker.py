"""The rpc_parallel worker of the array echo (its own module: numpy is imported only here)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import rpc_parallel as rp


class ArrayWorker(rp.Worker[None]):
    @rp.rpc
    async def echo(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return a
