"""Exceptions by type across the wire.

The serving side describes an exception by its qualified type name (``module.Qualname``;
builtins by bare name), its ``args`` and its public attributes, each encoded when it can be
(``describe``). The calling side rebuilds it (``rebuild``): when the class is an
``Exception`` already importable here -- its module is in ``sys.modules`` -- the call fails
with an instance of a subclass of both :class:`RemoteError` and that class, so ``except
KeyError:`` or ``except InsufficientFunds:`` around a call works; otherwise with a plain
``RemoteError`` naming the type.

Why only modules already imported: the type name comes from the peer. A peer has proved the
secret, so importing a module it names would not let a stranger in, but importing runs code
the program never asked for; a class the program catches by name is imported already. The
library's own errors (subclasses of :class:`Error`) are never rebuilt: ``except
rp.WorkerDied`` must mean *this* worker died, not that the remote code saw one.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from .errors import Error, RemoteError
from .functions import ENCODER, type_name

MAX_DETAIL_SIZE = 64 * 1024
"""Encoded ``args`` or attributes larger than this are not sent (the message and traceback
are): an error report stays small whatever the exception carries."""

_REMOTE_FIELDS = frozenset({"function", "remote_type", "remote_message", "remote_traceback"})


def _encoded(value: object) -> bytes | None:
    try:
        data = ENCODER.encode(value)
    except Exception:  # Any failure of a user's value or a register_type hook: not sent.
        return None
    return data if len(data) <= MAX_DETAIL_SIZE else None


def describe(error: BaseException) -> tuple[str, bytes, bytes]:
    """``error``'s qualified type name, its encoded ``args`` (``b""`` when they cannot be
    sent) and its encoded public attributes (those that can be sent; ``b""`` if none)."""
    args = _encoded(list(error.args)) or b""
    attributes: dict[str, msgspec.Raw] = {}
    for name, value in getattr(error, "__dict__", {}).items():
        if isinstance(name, str) and not name.startswith("_") and name not in _REMOTE_FIELDS:
            data = _encoded(value)
            if data is not None:
                attributes[name] = msgspec.Raw(data)
    encoded_attributes = (_encoded(attributes) or b"") if attributes else b""
    return type_name(type(error)), args, encoded_attributes


def _decoded(data: bytes, expected: type) -> Any:
    if not data:
        return None
    try:
        value = msgspec.msgpack.decode(data)
    except (msgspec.MsgspecError, UnicodeDecodeError):
        return None
    return value if isinstance(value, expected) else None


def find_class(qualified: str) -> type[Exception] | None:
    """The exception class named ``qualified`` if its module is already imported here, it is
    an ``Exception`` and not one of the library's own errors; else None."""
    parts = qualified.split(".")
    if len(parts) == 1:
        parts = ["builtins", *parts]
    for split in range(len(parts) - 1, 0, -1):
        found: object = sys.modules.get(".".join(parts[:split]))
        if found is None:
            continue
        for attribute in parts[split:]:
            found = getattr(found, attribute, None)
        if (
            isinstance(found, type) and issubclass(found, Exception)
            and not issubclass(found, Error) and type_name(found) == qualified
        ):
            return found
        return None
    return None


_subclasses: dict[type, type[RemoteError]] = {}
"""One subclass per class (a plain dict: the subclass refers to its base, so weak keys would
never be freed anyway; classes found in ``sys.modules`` live as long as their module)."""


def _subclass(cls: type[Exception]) -> type[RemoteError] | None:
    """The class both ``RemoteError`` and ``cls``, made once per class (None if Python cannot
    combine them, e.g. two incompatible built-in layouts)."""
    made = _subclasses.get(cls)
    if made is None:
        try:
            made = type(cls.__name__, (RemoteError, cls), {
                "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                "__doc__": f"A remote {cls.__qualname__}: also an rpc_parallel RemoteError.",
                "__str__": RemoteError.__str__,
                "__reduce__": _reduce,
            })
        except TypeError:
            return None
        _subclasses[cls] = made
    return made


def _reduce(error: RemoteError) -> tuple[Any, tuple[Any, ...]]:
    """Pickle a rebuilt error as what rebuilds it (its class is made here, not importable)."""
    attributes = {name: value for name, value in vars(error).items()
                  if not name.startswith("_") and name not in _REMOTE_FIELDS}
    return _restore, (error.function, error.remote_type, error.remote_message,
                      error.remote_traceback, error.args, attributes)


def rebuild(
    function: str, qualified: str, message: str, traceback: str, args: bytes, attributes: bytes
) -> RemoteError:
    """The exception a call of ``function`` fails with when its implementation raised: typed
    as the original class when that is importable here (see the module's docstring)."""
    arguments = _decoded(args, list)
    return _restore(function, qualified, message, traceback,
                    tuple(arguments) if arguments is not None else (message,),
                    _decoded(attributes, dict) or {})


def _restore(
    function: str, qualified: str, message: str, traceback: str,
    arguments: tuple[Any, ...], attributes: dict[str, Any],
) -> RemoteError:
    """``rebuild`` from decoded ``args`` and attributes (also how a rebuilt error unpickles)."""
    cls = find_class(qualified) if qualified else None
    subclass = _subclass(cls) if cls is not None else None
    if subclass is None:
        return RemoteError(function, qualified, message, traceback)
    try:
        # Not ``__init__``: a class's own ``__init__`` may take other arguments than its
        # ``args`` (keyword-only ones, say); ``args`` and the attributes are set as they were.
        error: RemoteError = subclass.__new__(subclass, *arguments)
        error.args = arguments
    except Exception:
        return RemoteError(function, qualified, message, traceback)
    for name, value in attributes.items():
        try:
            setattr(error, name, value)
        except Exception:  # A read-only property, say: keep what __new__ made.
            continue
    error.function = function
    error.remote_type = qualified
    error.remote_message = message
    error.remote_traceback = traceback
    return error
