"""One record of every tunable of the RPC layer."""

from __future__ import annotations

import os

import msgspec

SETTINGS_ENVIRONMENT_VARIABLE = "RPC_PARALLEL_RPC_SETTINGS"
PREAUTH_MAX_MESSAGE_SIZE = 4096
"""Until the peer has authenticated, no frame may be larger than this."""
ENVELOPE = 64
"""A frame may exceed ``max_message_size`` by this much (frame header fields, msgpack headers),
so that a value of exactly ``max_message_size`` bytes (a 256 MiB ``bytes``) can be sent."""


class RpcSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits and timings of every connection of an application.

    ``stream_window`` is how many bytes of stream items a receiver accepts ahead of its
    consumer before the sender waits (per stream).

    ``mapped_writes``: a large array sent to a process of the same host is copied into its
    shared-memory segment through a mapping the sender keeps while the segment is in its
    pool, so the segments count in the sender's RSS (the memory is the same: the segments
    exist either way, decision 0022). It pays only where the kernel cannot back segments with
    huge pages (before Linux 6.1): there the default writes with ``pwrite``, at three times
    the CPU time of a copy. With huge pages the sender maps a segment for its copy only,
    which costs next to nothing, and this setting changes nothing but the RSS.
    """

    max_message_size: int = 256 * 1024 * 1024
    handshake_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    stream_window: int = 2 * 1024 * 1024
    mapped_writes: bool = False

    def __post_init__(self) -> None:
        if self.max_message_size < PREAUTH_MAX_MESSAGE_SIZE:
            raise ValueError(f"max_message_size must be at least {PREAUTH_MAX_MESSAGE_SIZE}")
        if self.max_message_size > 0xFFFF_FFFF - ENVELOPE:
            raise ValueError("max_message_size must fit a 32-bit frame length")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError("heartbeat_timeout must be greater than heartbeat_interval > 0")
        if self.stream_window <= 0:
            raise ValueError("stream_window must be positive")

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_json(cls, text: str | bytes) -> RpcSettings:
        """Parse settings from JSON; unknown keys and wrong types are refused by name."""
        try:
            return msgspec.json.decode(text, type=cls, strict=True)
        except (msgspec.ValidationError, msgspec.DecodeError) as error:
            raise ValueError(f"invalid RPC settings {text!r}: {error}") from None

    def with_environment(self) -> RpcSettings:
        """These settings, overridden key by key by ``RPC_PARALLEL_RPC_SETTINGS`` (JSON)."""
        text = os.environ.get(SETTINGS_ENVIRONMENT_VARIABLE)
        if not text:
            return self
        try:
            overrides = msgspec.json.decode(text)
        except msgspec.DecodeError as error:
            raise ValueError(
                f"{SETTINGS_ENVIRONMENT_VARIABLE} is not valid JSON: {error}"
            ) from None
        if not isinstance(overrides, dict):
            raise ValueError(f"{SETTINGS_ENVIRONMENT_VARIABLE} must be a JSON object")
        merged = msgspec.structs.asdict(self) | overrides
        return RpcSettings.from_json(msgspec.json.encode(merged))
