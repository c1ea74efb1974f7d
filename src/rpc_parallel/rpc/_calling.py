"""The calling side of a connection: calls in flight and their errors.

``RpcCall`` / ``ReversePipeCall`` are what ``Connection._outgoing`` holds for an rpc or a
reverse pipe (a pipe or state call is its ``PipeReader``); ``error_from_info`` turns an ERROR
frame into the exception a call fails with; ``cannot_send`` names a value that cannot be
encoded or is too large. Imports nothing of ``connection``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from ._exceptions import rebuild
from .errors import MessageTooLarge, ProtocolError
from .frames import ErrorInfo
from .functions import FunctionSpec
from .streams import Credit


class RpcCall:
    __slots__ = ("future", "spec")

    def __init__(self, spec: FunctionSpec, future: asyncio.Future[Any]) -> None:
        self.spec = spec
        self.future = future

    def _on_response(self, payload: memoryview) -> None:
        future = self.future
        if not future.done():
            spec = self.spec
            if not spec._copy_payload:
                try:
                    future.set_result(spec.response_decoder.decode(payload))
                    return
                except (msgspec.MsgspecError, UnicodeDecodeError):
                    pass  # decode_response explains it.
            try:
                future.set_result(spec.decode_response(payload))
            except ProtocolError as error:
                future.set_exception(error)

    def _fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class ReversePipeCall(RpcCall):
    __slots__ = ("credit",)

    def __init__(self, spec: FunctionSpec, future: asyncio.Future[Any], credit: Credit) -> None:
        super().__init__(spec, future)
        self.credit = credit


def error_from_info(spec: FunctionSpec, info: ErrorInfo) -> Exception:
    if info.kind == "protocol":
        return ProtocolError(info.message)
    return rebuild(spec.name, info.qualified_type or info.type_name, info.message, info.traceback,
                   info.args, info.attributes)


UNSENDABLE = {"arguments": ("the arguments", "arguments"), "item": ("a stream item",) * 2,
               "result": ("the result", "the result")}


def cannot_send(
    spec: FunctionSpec, what: str, error: BaseException, serving: bool = False
) -> ProtocolError:
    """The error for a value of a call of ``spec`` that cannot be encoded or is too large
    (``what``: arguments, item, result). The caller's side keeps ``MessageTooLarge``; the
    serving side reports a ``ProtocolError`` to the peer."""
    long, short = UNSENDABLE[what]
    if isinstance(error, MessageTooLarge) and not serving:
        return MessageTooLarge(f"{spec.name}: {short}: {error}")
    return ProtocolError(f"{spec.name}: {long} cannot be sent: {error}")
