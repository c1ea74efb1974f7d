"""Private internals of ``rp.map_reduce`` and ``rp.WorkerPool`` (not public surface)."""
