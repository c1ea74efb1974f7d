"""The handshake's proofs: each side proves it holds the application's secret by an HMAC
over both sides' nonces and its role (architecture section 3.4)."""

from __future__ import annotations

import hashlib
import hmac


def prove(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, b"rpc_parallel/1 " + role + first + second, hashlib.sha256).digest()


def verify(secret: bytes, role: bytes, first: bytes, second: bytes, proof: bytes) -> bool:
    """Whether ``proof`` is the peer's proof, in constant time."""
    return hmac.compare_digest(proof, prove(secret, role, first, second))
