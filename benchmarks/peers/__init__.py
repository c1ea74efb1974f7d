"""Peer-comparison benchmarks: rpc_parallel against the Python tools people use instead.

Run everything with ``python benchmarks/peers/run.py`` (or ``python -m benchmarks.peers``) from
the repository root; see docs/benchmarks.md.
"""
