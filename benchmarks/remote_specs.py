"""The two functions the remote benchmark's servers serve (shared by both ends)."""

from rpc_parallel.rpc import FunctionSpec

ADD = FunctionSpec("bench.add", kind="rpc", parameters=[("x", int)], response=int)
ECHO = FunctionSpec("bench.echo", kind="rpc", parameters=[("data", bytes)], response=bytes)
