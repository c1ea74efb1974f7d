"""A master run under ``salloc -N1 -n2 ... python master_shipped.py ALIAS SSH_CONFIG DIR PYTHON``
that ships itself with the public API (``rp.RemoteExecutable.copy_to_host`` over ssh to
``ALIAS``, into ``DIR``, for the interpreter ``PYTHON`` there) and runs its worker class, which
lives in this script, from the bundle: once as a step of the allocation, once as a job of its
own. Prints one JSON line: where each worker's interpreter and modules came from."""

from __future__ import annotations

import json
import os
import sys

import rpc_parallel as rp


class Shipped(rp.Worker[int]):
    async def init_worker_state(self, offset: int) -> None:
        self.offset = offset

    @rp.rpc
    async def files(self) -> list[str]:
        import msgspec

        return [sys.executable, rp.__file__, msgspec.__file__, __file__,
                os.environ.get("SLURM_JOB_ID", ""), os.environ.get("SLURM_STEP_ID", "")]

    @rp.rpc
    async def add(self, x: int) -> int:
        return x + self.offset


async def main() -> None:
    alias, config, directory, python = sys.argv[1:5]
    exe = await rp.RemoteExecutable.copy_to_host(alias, directory, ssh_options=["-F", config],
                                                 python=python)
    result: dict[str, object] = {"path": exe.path, "allocation": os.environ["SLURM_JOB_ID"]}
    async with await Shipped.spawn(1, how=rp.Slurm(executable=exe)) as step:
        result["step"] = [await step.run(Shipped.add, 1), *await step.run(Shipped.files)]
    del os.environ["SLURM_JOB_ID"]  # from here on, outside the allocation: a job of its own
    async with await Shipped.spawn(2, how=rp.Slurm(executable=exe)) as job:
        result["job"] = [await job.run(Shipped.add, 1), *await job.run(Shipped.files)]
    await exe.delete()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    rp.start_app(main)
