"""The handshake: the steps a connection takes before it is live (architecture section 3.4).

HELLO (each side's nonce, magic and protocol version), AUTH (each side proves it holds the
application's secret by an HMAC over both nonces and its role), MENU (the functions each side
serves). ``Handshake`` holds that state and checks each step; it sends nothing itself: the
connection sends what a step returns, and closes with the text of a ``HandshakeViolation``.
Imports nothing of ``connection``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os

import msgspec

from . import frames
from .frames import MenuEntry


def prove(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, b"rpc_parallel/1 " + role + first + second, hashlib.sha256).digest()


def verify(secret: bytes, role: bytes, first: bytes, second: bytes, proof: bytes) -> bool:
    """Whether ``proof`` is the peer's proof, in constant time."""
    return hmac.compare_digest(proof, prove(secret, role, first, second))


class HandshakeViolation(Exception):
    """The peer broke the handshake; the text says how (the connection closes with it)."""


_UNREADABLE = (msgspec.MsgspecError, UnicodeDecodeError)


class Handshake:
    """One side's handshake state: its nonce, the peer's, whether the peer has proved it
    holds the secret, whether the menus are exchanged, and the timer that bounds it all."""

    __slots__ = ("_is_client", "_peer_nonce", "_secret", "authenticated", "done", "nonce", "timer")

    def __init__(self, secret: bytes, is_client: bool) -> None:
        self._secret = secret
        self._is_client = is_client
        self.nonce = os.urandom(32)
        self._peer_nonce: bytes | None = None
        self.authenticated = False
        self.done = False
        self.timer: asyncio.TimerHandle | None = None

    def hello(self) -> frames.Hello:
        """This side's HELLO, sent as soon as the transport is up."""
        return frames.Hello(frames.MAGIC, frames.PROTOCOL_VERSION, self.nonce)

    def on_hello(self, payload: memoryview) -> bytes:
        """Check the peer's HELLO; return this side's proof (the AUTH to send)."""
        if self._peer_nonce is not None:
            raise HandshakeViolation("a second HELLO")
        try:
            hello = frames.HELLO_DECODER.decode(payload)
        except _UNREADABLE:
            raise HandshakeViolation(
                "handshake: malformed HELLO (not an rpc_parallel peer?)"
            ) from None
        if hello.magic != frames.MAGIC:
            raise HandshakeViolation(
                f"handshake: wrong magic {hello.magic[:40]!r} (not an rpc_parallel peer)"
            )
        if hello.version != frames.PROTOCOL_VERSION:
            raise HandshakeViolation(
                f"handshake: the peer speaks protocol version {hello.version}, "
                f"this side speaks {frames.PROTOCOL_VERSION}"
            )
        if len(hello.nonce) != 32:
            raise HandshakeViolation("handshake: malformed nonce")
        self._peer_nonce = hello.nonce
        role = b"client" if self._is_client else b"server"
        return prove(self._secret, role, hello.nonce, self.nonce)

    @property
    def peer_nonce(self) -> bytes | None:
        """The peer's nonce, once its HELLO has arrived."""
        return self._peer_nonce

    def on_auth(self, payload: memoryview) -> None:
        """Check the peer's proof; afterwards the peer counts as authenticated."""
        if self._peer_nonce is None or self.authenticated:
            raise HandshakeViolation("handshake: AUTH out of order")
        try:
            proof = frames.AUTH_DECODER.decode(payload)
        except _UNREADABLE:
            raise HandshakeViolation("handshake: malformed AUTH") from None
        peer_role = b"server" if self._is_client else b"client"
        if not verify(self._secret, peer_role, self.nonce, self._peer_nonce, proof):
            raise HandshakeViolation(
                "authentication failed: the peer does not hold this application's secret"
            )
        self.authenticated = True

    def on_menu(self, payload: memoryview) -> list[MenuEntry]:
        """Read the peer's menu: the last step; the handshake is done."""
        if not self.authenticated or self.done:
            raise HandshakeViolation("handshake: MENU out of order")
        try:
            menu = frames.MENU_DECODER.decode(payload)
        except _UNREADABLE:
            raise HandshakeViolation("handshake: malformed MENU") from None
        self.done = True
        self.stop()
        return menu

    def stop(self) -> None:
        """Stop the handshake timer (done, or the connection closed)."""
        if self.timer is not None:
            self.timer.cancel()
