"""``start_app``: the recommended entry point of a program that spawns workers."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._handle import describe_loop
from ._state import State, process
from .errors import Error
from .rpc import run as rpc_run
from .rpc.settings import RpcSettings


def start_app(
    main: Callable[[], Awaitable[object]],
    *,
    rpc_settings: RpcSettings | None = None,
    master_host: str | None = None,
) -> None:
    """Run ``main`` as the master of a parallel application.

    ``rpc_settings`` apply to every connection of the application, workers included;
    ``RPC_PARALLEL_RPC_SETTINGS`` (JSON) overrides them key by key. ``master_host``: the
    address workers on other hosts connect back to, for a master behind NAT or with several
    addresses (default: found on the worker's side, e.g. from ``SSH_CONNECTION``; the
    environment variable ``RPC_PARALLEL_MASTER_HOST`` sets it too). When ``main`` returns,
    every worker not spawned with ``shutdown_on="called_shutdown"`` is closed.

    When the main script is imported by a worker process (a worker class defined in the
    script), this returns at once without running ``main``.
    """
    state = process()
    if state.importing_for_worker or state.state is State.WORKER:
        return
    _refuse_a_running_loop()
    state.settings = (rpc_settings or RpcSettings()).with_environment()
    state.state = State.MASTER
    if master_host is not None:
        state.master_host_setting = master_host
    rpc_run(_run_master(main))


def _refuse_a_running_loop() -> None:
    """``start_app`` runs its own event loop: inside a running one (a Jupyter notebook, an
    IPython shell, an ``async def``) it cannot, and says what to do instead."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    raise Error(
        f"rp.start_app cannot run inside a running event loop ({describe_loop(loop)}); "
        "Jupyter and IPython run one. There, use the async API with top-level await "
        "(`w = await Adder.spawn(1)`, `await w.run(Adder.add, 2)`), or rp.blocking "
        "(`with rp.blocking.spawn(Adder, 1) as w: w.run(Adder.add, 2)`)."
    )


async def _run_master(main: Callable[[], Awaitable[object]]) -> None:
    # Imported here, as in ``expert``: a worker process imports this module, never a master.
    from ._master import existing_master

    try:
        await main()
    finally:
        master = existing_master()
        if master is not None:
            await master.close()


class expert:
    """Direct control for programs that do not use ``start_app``."""

    @staticmethod
    def init_master(
        rpc_settings: RpcSettings | None = None, *, master_host: str | None = None
    ) -> None:
        """Make this process a master with these settings (before any spawn);
        ``master_host`` as for ``start_app``."""
        state = process()
        if state.state is State.WORKER:
            raise RuntimeError("a worker process cannot become a master with init_master")
        state.settings = (rpc_settings or RpcSettings()).with_environment()
        state.state = State.MASTER
        if master_host is not None:
            state.master_host_setting = master_host

    @staticmethod
    async def start_master_server() -> str:
        """Start this loop's master server now (spawn starts it on demand); its address."""
        from ._master import current_master

        return await current_master().address()

    @staticmethod
    async def shutdown_master() -> None:
        """Close every worker link of this loop (as ``start_app`` does at the end)."""
        from ._master import existing_master

        master = existing_master()
        if master is not None:
            await master.close()

    @staticmethod
    def run_as_worker_if_requested() -> None:
        """In a custom worker entry point (``rp.Local(command=[...])``): become the
        worker if this process was launched as one, else return."""
        from ._worker_main import run_as_worker_if_requested

        run_as_worker_if_requested()
