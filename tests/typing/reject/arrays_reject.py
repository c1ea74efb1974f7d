"""numpy arrays of the wrong dtype are refused statically, as they are at run time."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

import rpc_parallel as rp


class Science(rp.Worker[None]):
    @rp.rpc
    async def scale(self, a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return a


async def use(w: rp.WorkerHandle[Science], ints: npt.NDArray[np.int32]) -> None:
    await w.run(Science.scale, ints)  # expect-error
    await w.run(Science.scale, [1.0, 2.0])  # expect-error
    result: npt.NDArray[np.int32] = await w.run(Science.scale, np.ones(3))  # expect-error
    print(result)
