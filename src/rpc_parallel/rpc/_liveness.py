"""Heartbeats: whether the peer is alive, and whether this side's own loop stalled.

Every ``heartbeat_interval`` a live connection sends a HEARTBEAT and judges the peer by
whether anything arrived since the last tick (the owner's ``_received`` flag, set per read,
so the receive path pays one store); a peer silent for ``heartbeat_timeout`` is declared
dead. A tick that fires late means this side's loop was blocked: the silence is then this
side's doing, so it is noted (``recent_stall``, ``stall_note``), not held against the peer.
Imports nothing of ``connection``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from ._calling import spec_of
from .errors import CloseKind
from .frames import HEARTBEAT
from .settings import RpcSettings


class LivenessOwner(Protocol):
    """What heartbeats need of the connection (``Connection``)."""

    loop: asyncio.AbstractEventLoop
    settings: RpcSettings
    _received: bool
    _outgoing: dict[int, Any]

    def _write(self, message_type: int, call_id: int, argument: int, value: Any = ...) -> int:
        """Append one frame to the outgoing buffer."""
        ...

    def _peer_silent(self, reason: str) -> None:
        """Close the connection: the peer was silent too long (``reason`` says so)."""


class Liveness:
    """The heartbeat timer and the record of this side's last stall."""

    __slots__ = ("_due", "_last_heard", "_owner", "_stall", "_timer")

    def __init__(self, owner: LivenessOwner) -> None:
        self._owner = owner
        self._timer: asyncio.TimerHandle | None = None
        self._last_heard = 0.0
        self._due = 0.0  # When the timer should fire.
        self._stall: tuple[float, float] | None = None  # (when, seconds): this loop's last.

    def start(self) -> None:
        """The connection is live: start the heartbeats."""
        self._last_heard = self._owner.loop.time()
        self._arm(self._owner.settings.heartbeat_interval)

    def stop(self) -> None:
        """The connection closed: no more heartbeats."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, delay: float) -> None:
        loop = self._owner.loop
        self._due = loop.time() + delay
        self._timer = loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        """Send a heartbeat; judge the peer by what was heard (not after this side stalled:
        then the peer gets a full heartbeat_timeout from now)."""
        owner = self._owner
        settings = owner.settings
        now = owner.loop.time()
        late = now - self._due
        if late >= max(settings.heartbeat_interval, 0.5):
            self._stall = (now, late)
            owner._received = False
            self._last_heard = now
        elif owner._received:
            owner._received = False
            self._last_heard = now
        elif now - self._last_heard >= settings.heartbeat_timeout:
            self._timer = None
            owner._peer_silent(self._silence_reason(now - self._last_heard))
            return
        owner._write(HEARTBEAT, 0, 0)
        self._arm(settings.heartbeat_interval)

    def _silence_reason(self, silent: float) -> str:
        """Why the peer is declared dead: how long it was silent, what that can mean, and
        which of its functions were running for this side."""
        running = sorted({spec_of(entry).name for entry in self._owner._outgoing.values()})
        text = (
            f"heartbeat timeout: nothing heard from the peer for {silent:.1f} s "
            f"(heartbeat_timeout {self._owner.settings.heartbeat_timeout:g} s): its process is "
            "stopped or hung, or its event loop is blocked (stalled: an async def that does "
            "not await, or a plain def holding the GIL in one long C call)"
        )
        if running:
            text += f"; it was running {', '.join(running[:5])}"
            if len(running) > 5:
                text += f" and {len(running) - 5} more"
        return text

    def recent_stall(self) -> float | None:
        """For how many seconds this side's event loop was blocked, if it was lately: see
        ``Connection.recent_stall``."""
        settings = self._owner.settings
        now = self._owner.loop.time()
        if self._timer is not None:
            late = now - self._due
            if late >= max(settings.heartbeat_interval, 0.5):
                self._stall = (now, late)  # Due, not yet run: the loop is just back.
        if self._stall is None:
            return None
        when, seconds = self._stall
        if now - when > settings.heartbeat_timeout + seconds:
            return None
        return seconds

    def stall_note(self, kind: CloseKind) -> str:
        """For a connection lost or closed by the peer: this side's recent stall, if it was
        long enough for the peer to give up on this side."""
        seconds = self.recent_stall()
        settings = self._owner.settings
        if (
            kind == "closed_here" or seconds is None
            or seconds + settings.heartbeat_interval < settings.heartbeat_timeout
        ):
            return ""
        return (
            f" (this side's event loop was blocked (stalled) for {seconds:.1f} s, so this "
            f"side sent no heartbeats for that long; heartbeat_timeout is "
            f"{settings.heartbeat_timeout:g} s)"
        )
