"""rpc_parallel: typed parallel workers on a typed async RPC layer."""
