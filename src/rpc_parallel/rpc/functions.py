"""Function descriptions and the typed codecs built once from them."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import inspect
import numbers
import re
import sys
import types
import typing
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from . import _segments
from ._segments import Segments
from .errors import ProtocolError

Kind = Literal["rpc", "pipe", "state", "one_way", "reverse_pipe"]
KINDS: tuple[Kind, ...] = ("rpc", "pipe", "state", "one_way", "reverse_pipe")

_to_wire: dict[type, Callable[[Any], Any]] = {}
_from_wire: dict[type, Callable[[Any], Any]] = {}


def register_type(cls: type, to_wire: Callable[[Any], Any], from_wire: Callable[[Any], Any]) -> None:
    """Teach the codecs a type msgspec does not know (``to_wire`` must give a msgspec value)."""
    _to_wire[cls] = to_wire
    _from_wire[cls] = from_wire


def _encode_hook(value: Any, segments: Segments | None = None,
                 deferred: list[tuple[bytes, memoryview]] | None = None) -> Any:
    for cls in type(value).__mro__:
        convert = _to_wire.get(cls)
        if convert is not None:
            return convert(value)
    numpy = sys.modules.get("numpy")  # numpy is never imported here: a value of it means it is
    if numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic)):
        from . import _arrays

        return _arrays.to_wire(value, segments, deferred)
    # Numbers of other libraries (numpy's float64, int64 ...) travel as the Python number
    # they stand for, so that they pass where ``int`` or ``float`` is declared.
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, float):
        return float(value)  # a float subclass; no lossy conversion of other reals
    if type(value).__module__ == "numpy" and getattr(value, "shape", None) == ():
        return value.item()  # a numpy scalar (bool_, str_ ...): its Python value
    # TypeError, not NotImplementedError: msgspec passes a hook's exception through, and the
    # connection reports a TypeError as "cannot be sent" instead of failing the call.
    raise TypeError(f"objects of type {type(value).__qualname__} cannot be sent")


def _decode_hook(expected: Any, value: Any) -> Any:
    origin = typing.get_origin(expected) or expected
    convert = _from_wire.get(origin)
    if convert is None:
        if _is_numpy_type(origin):
            from . import _arrays

            return _arrays.check(expected, value)
        # A TypeError becomes a msgspec.ValidationError (a refused value), never a crash.
        raise TypeError(f"type {type_name(expected)} cannot be received")
    return convert(value)


def _ext_hook(code: int, data: memoryview) -> Any:
    """MessagePack extension values: numpy arrays (codes 1 and 2, ``_arrays``)."""
    if code not in (1, 2):
        return msgspec.msgpack.Ext(code, bytes(data))
    # msgspec passes a hook's exceptions through: a ValidationError is a refused value.
    try:
        from . import _arrays
    except ImportError:
        _segments.release_extension(code, data)
        raise msgspec.ValidationError(
            "a numpy array arrived, but numpy is not installed here"
        ) from None
    try:
        return _arrays.from_ext(code, data)
    except (ValueError, TypeError) as error:
        raise msgspec.ValidationError(str(error)) from None


def _is_numpy_type(cls: Any) -> bool:
    """Whether ``cls`` is a numpy array or scalar type (without importing numpy)."""
    if not isinstance(cls, type) or not cls.__module__.startswith("numpy"):
        return False
    from . import _arrays

    return _arrays.is_numpy_type(cls)


ENCODER = msgspec.msgpack.Encoder(enc_hook=_encode_hook)


def make_encoder(segments: Segments | None,
                 deferred: list[tuple[bytes, memoryview]] | None = None) -> msgspec.msgpack.Encoder:
    """An encoder whose large numpy arrays go through ``segments`` (shared memory of one
    connection between processes of one host), and whose other arrays of some size are left
    to the connection to copy into the frame (``deferred``, see ``_arrays.splice``);
    ``ENCODER`` when there are neither."""
    if segments is None and deferred is None:
        return ENCODER
    return msgspec.msgpack.Encoder(
        enc_hook=functools.partial(_encode_hook, segments=segments, deferred=deferred))


class UnresolvedAnnotation(TypeError):
    """An annotation names something that is not defined (yet); the layer above checks
    again later (a class may be defined after the function that names it)."""


class UnsendableType(TypeError):
    """A declared type that no value can travel as."""


_SENDABLE_CLASSES: tuple[type, ...] = (
    bool, int, float, str, bytes, bytearray, memoryview, type(None), list, tuple, set,
    frozenset, dict, datetime.datetime, datetime.date, datetime.time, datetime.timedelta,
    uuid.UUID, decimal.Decimal, enum.Enum, msgspec.Raw, msgspec.msgpack.Ext,
)
"""Classes msgspec encodes and decodes itself (and their subclasses)."""


def unsendable_part(annotation: Any, seen: set[int] | None = None) -> Any | None:
    """The part of ``annotation`` that no value can be sent as: a class msgspec does not
    know and ``register_type`` was not told about (looked for inside containers, unions and
    the fields of structs, dataclasses, TypedDicts and NamedTuples); None if every part can.
    A name that cannot be resolved counts as sendable here (the decoder reports it)."""
    seen = set() if seen is None else seen
    if id(annotation) in seen or annotation is Any or annotation is None:
        return None
    seen.add(id(annotation))
    supertype = getattr(annotation, "__supertype__", None)  # typing.NewType
    if supertype is not None:
        return unsendable_part(supertype, seen)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return None
    if origin is not None:
        if isinstance(origin, type) and (
            any(k in _from_wire for k in origin.__mro__) or _is_numpy_type(origin)
        ):
            return None  # e.g. WorkerHandle[Adder]: its own codec, whatever its parameters
        for argument in typing.get_args(annotation):
            found = unsendable_part(argument, seen)
            if found is not None:
                return found
        return _unsendable_class(origin, seen) if isinstance(origin, type) else None
    return _unsendable_class(annotation, seen) if isinstance(annotation, type) else None


def _unsendable_class(cls: type, seen: set[int]) -> Any | None:
    if cls is object or issubclass(cls, _SENDABLE_CLASSES) or any(k in _from_wire for k in cls.__mro__):
        return None
    if _is_numpy_type(cls):
        return None
    if cls.__module__ in ("typing", "collections.abc", "collections", "types"):
        return None  # Sequence, Mapping, OrderedDict, UnionType ...: containers msgspec knows
    has_fields = (
        issubclass(cls, msgspec.Struct) or dataclasses.is_dataclass(cls)
        or hasattr(cls, "__attrs_attrs__") or typing.is_typeddict(cls)
        or (issubclass(cls, tuple) and hasattr(cls, "_fields"))
    )
    if not has_fields:
        return cls
    try:
        hints = typing.get_type_hints(cls)
    except Exception:
        return None  # Not decidable now; the decoder reports it.
    for hint in hints.values():
        found = unsendable_part(hint, seen)
        if found is not None:
            return found
    return None


def make_decoder(annotation: Any) -> msgspec.msgpack.Decoder[Any]:
    return msgspec.msgpack.Decoder(annotation, dec_hook=_decode_hook, ext_hook=_ext_hook)


_module_aliases: dict[str, str] = {}


def alias_module(module: str, shown_as: str) -> None:
    """Name the types of ``module`` as if they were defined in ``shown_as``, in signatures
    and digests. The layer above uses it for a script that one process runs as ``__main__``
    and another imports under a different name."""
    _module_aliases[module] = shown_as


def type_name(annotation: Any) -> str:
    """A short, stable, readable name of a type annotation."""
    if annotation is None or annotation is type(None):
        return "None"
    if annotation is Any:
        return "Any"
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return " | ".join(type_name(a) for a in typing.get_args(annotation))
    origin = typing.get_origin(annotation)
    if _is_numpy_type(origin or annotation):
        from . import _arrays

        name = _arrays.type_name(annotation)
        if name is not None:
            return name
    if origin is not None:
        arguments = typing.get_args(annotation)
        inner = ", ".join(type_name(a) for a in arguments) if arguments else "()"
        return f"{type_name(origin)}[{inner}]"
    if isinstance(annotation, type):
        module = annotation.__module__
        if module == "builtins":
            return annotation.__qualname__
        module = _module_aliases.get(module, module)
        return f"{module}.{annotation.__qualname__}"
    return repr(annotation)


def _schema_text(annotation: Any) -> str:
    try:
        return msgspec.json.encode(
            msgspec.json.schema(annotation), order="sorted"
        ).decode()
    except (TypeError, ValueError):
        return type_name(annotation)


def _mentions_memoryview(annotation: Any) -> bool:
    return "memoryview" in repr(annotation)


@dataclass(frozen=True, slots=True)
class Parameter:
    name: str
    annotation: Any
    default: Any = inspect.Parameter.empty


class FunctionSpec:
    """What a function is on the wire: name, version, kind and the types it carries.

    * ``rpc``: ``parameters`` -> ``response``
    * ``pipe``: ``parameters`` -> a stream of ``item``
    * ``state``: ``parameters`` -> ``response`` (initial state) + a stream of ``item`` (updates)
    * ``one_way``: ``parameters`` -> nothing
    * ``reverse_pipe``: ``parameters`` + a stream of ``item`` from the caller -> ``response``
    """

    __slots__ = (
        "_copy_payload",
        "_fast_arity",
        "_signature_binder",
        "arguments_decoder",
        "digest",
        "item",
        "item_decoder",
        "kind",
        "name",
        "parameters",
        "response",
        "response_decoder",
        "signature",
        "stream_parameter",
        "version",
    )

    def __init__(
        self,
        name: str,
        *,
        kind: Kind,
        parameters: Sequence[Parameter | tuple[str, Any]] = (),
        response: Any = None,
        item: Any = None,
        version: int = 1,
        stream_parameter: str = "stream",
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown function kind {kind!r}; expected one of {KINDS}")
        self.name = name
        self.version = version
        self.kind: Kind = kind
        self.parameters = tuple(
            p if isinstance(p, Parameter) else Parameter(p[0], p[1]) for p in parameters
        )
        self.response = response if kind in ("rpc", "state", "reverse_pipe") else None
        self.item = item if kind in ("pipe", "state", "reverse_pipe") else None
        annotations = [p.annotation for p in self.parameters]
        arguments_type: Any = tuple[tuple(annotations)] if annotations else tuple[()]  # type: ignore[misc]
        self.arguments_decoder = make_decoder(arguments_type)
        self.response_decoder = make_decoder(self.response)
        self.item_decoder = make_decoder(self.item)
        self._copy_payload = any(
            _mentions_memoryview(a) for a in (*annotations, self.response, self.item)
        )
        self.signature = self._signature_text()
        self.digest = self._type_digest(annotations)
        self.stream_parameter = stream_parameter if kind == "reverse_pipe" else None
        self._signature_binder = self._binder()
        self._fast_arity = len(self._signature_binder.parameters)

    def _signature_text(self) -> str:
        """The signature as people read it, e.g. ``rpc (x: int) -> str``."""
        kind = self.kind
        parameter_text = ", ".join(f"{p.name}: {type_name(p.annotation)}" for p in self.parameters)
        result_text = {
            "rpc": type_name(self.response),
            "pipe": f"stream[{type_name(self.item)}]",
            "state": f"({type_name(self.response)}, stream[{type_name(self.item)}])",
            "one_way": "None (one-way)",
            "reverse_pipe": type_name(self.response),
        }[kind]
        if kind == "reverse_pipe":
            parameter_text += (", " if parameter_text else "") + f"stream[{type_name(self.item)}]"
        return f"{kind} ({parameter_text}) -> {result_text}"

    def _type_digest(self, annotations: list[Any]) -> str:
        """A short hash of the kind and the wire schema of every type the function carries:
        both sides' menus compare it."""
        digest_source = "\n".join(
            [self.kind, *(_schema_text(a) for a in annotations), _schema_text(self.response),
             _schema_text(self.item)]
        )
        return hashlib.sha256(digest_source.encode()).hexdigest()[:16]

    def _binder(self) -> inspect.Signature:
        """The signature ``bind`` checks calls against (a reverse pipe's stream last)."""
        binder_parameters = [
            inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=p.default)
            for p in self.parameters
        ]
        if self.stream_parameter is not None:
            binder_parameters.append(
                inspect.Parameter(self.stream_parameter, inspect.Parameter.POSITIONAL_OR_KEYWORD)
            )
        return inspect.Signature(binder_parameters)

    def __repr__(self) -> str:
        return f"<FunctionSpec {self.name} v{self.version}: {self.signature}>"

    @property
    def key(self) -> tuple[str, int]:
        return (self.name, self.version)

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        """Positional arguments in declaration order; defaults filled in.

        For a reverse pipe the stream is the last of them.
        """
        if not kwargs and len(args) == self._fast_arity:
            return args
        try:
            bound = self._signature_binder.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{self.name}: {error}") from None
        bound.apply_defaults()
        return bound.args

    def decode_arguments(self, payload: memoryview) -> tuple[Any, ...]:
        try:
            return self.arguments_decoder.decode(  # type: ignore[no-any-return]
                bytes(payload) if self._copy_payload else payload
            )
        except (msgspec.MsgspecError, UnicodeDecodeError) as error:
            raise self.arguments_failure(error, payload) from None

    def arguments_failure(self, error: Exception, payload: memoryview) -> ProtocolError:
        """The ``ProtocolError`` for arguments that failed to decode; gives back the
        shared-memory segments they name (see ``decode_failure``)."""
        _segments.release_in(payload)  # arrays in segments that decoding did not reach
        if isinstance(error, msgspec.ValidationError):
            return ProtocolError(self._describe_argument_error(str(error)))
        return ProtocolError(f"{self.name}: malformed arguments: {error}")

    def decode_response(self, payload: memoryview) -> Any:
        return self._decode(self.response_decoder, payload, "result")

    def decode_item(self, payload: memoryview) -> Any:
        return self._decode(self.item_decoder, payload, "stream item")

    def _decode(self, decoder: msgspec.msgpack.Decoder[Any], payload: memoryview, what: str) -> Any:
        try:
            return decoder.decode(bytes(payload) if self._copy_payload else payload)
        except (msgspec.MsgspecError, UnicodeDecodeError) as error:
            raise self.decode_failure(error, payload, what) from None

    def decode_failure(self, error: Exception, payload: memoryview, what: str = "result") -> ProtocolError:
        """The ``ProtocolError`` for ``payload`` that failed to decode as ``what``; gives back
        the shared-memory segments it names (decode each payload once: a segment is taken
        the first time)."""
        _segments.release_in(payload)
        if isinstance(error, msgspec.ValidationError):
            return ProtocolError(f"{self.name}: {what}: {error} (expected {self._expected(what)})")
        return ProtocolError(f"{self.name}: malformed {what}: {error}")

    def _expected(self, what: str) -> str:
        return type_name(self.response if what == "result" else self.item)

    def _describe_argument_error(self, message: str) -> str:
        match = re.search(r" - at (`key` in )?`\$\[(\d+)\](.*)`$", message)
        if match is None:
            if message.startswith("Expected `array` of length"):
                return (
                    f"{self.name}: expected {len(self.parameters)} argument(s) "
                    f"({self.signature}): {message}"
                )
            return f"{self.name}: arguments: {message}"
        index = int(match.group(2))
        parameter = self.parameters[index]
        where = f"argument {parameter.name!r}{match.group(3)}"
        if match.group(1):
            where += " (a key)"
        return (
            f"{self.name}: {where}: {message[: match.start()]} "
            f"(expected {type_name(parameter.annotation)})"
        )

    @classmethod
    def from_callable(
        cls,
        function: Callable[..., Any],
        *,
        kind: Kind,
        name: str | None = None,
        version: int = 1,
        skip_first: bool = False,
    ) -> FunctionSpec:
        """Read a function's annotations (``skip_first`` drops ``self``)."""
        return cls(name or function.__qualname__, version=version, kind=kind,
                   **describe_callable(function, kind=kind, skip_first=skip_first))


_ASYNC_ITERATORS = {
    "AsyncIterator", "AsyncIterable", "AsyncGenerator", "Iterator", "Iterable", "Generator",
}


def _stream_item(annotation: Any, where: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin is None or getattr(origin, "__name__", "") not in _ASYNC_ITERATORS:
        raise TypeError(f"{where} must be annotated AsyncIterator[T], got {type_name(annotation)}")
    return typing.get_args(annotation)[0]


def _unresolved(function: Callable[..., Any], where: str, error: Exception) -> str:
    """Which annotation of ``function`` cannot be resolved, and why."""
    namespace = getattr(function, "__globals__", {})
    for name, annotation in getattr(function, "__annotations__", {}).items():
        if not isinstance(annotation, str):
            continue
        try:
            eval(annotation, namespace)  # what typing.get_type_hints does with it
        except Exception as failure:
            what = "the result" if name == "return" else f"parameter {name!r}"
            return (f"{where}: {what}: cannot resolve the annotation {annotation!r} ({failure}); "
                    "a type that crosses the wire must be importable: define it at module "
                    "top level")
    return f"{where}: cannot resolve annotations: {error}"


def _check_sendable(annotation: Any, where: str, what: str) -> None:
    found = unsendable_part(annotation)
    if found is not None:
        inside = "" if found is annotation else f" (in {type_name(annotation)})"
        raise UnsendableType(
            f"{where}: {what} is declared {type_name(found)}{inside}, which cannot be sent: "
            "declare a type msgspec encodes (builtins, dataclasses, msgspec.Struct ...; see "
            "the guide, 'What can cross the wire') or teach it with "
            "rpc_parallel.rpc.register_type"
        )


def check_declared_types(function: Callable[..., Any], *, skip_first: bool = False) -> None:
    """``UnsendableType`` if a parameter or the result of ``function`` is declared with a
    type no value can travel as. Cheap (no codec is built), for use when a class is
    defined; annotations that do not resolve yet are left to ``describe_callable``."""
    try:
        hints = typing.get_type_hints(function)
    except Exception:
        return
    where = getattr(function, "__qualname__", repr(function))
    names = list(inspect.signature(function).parameters)[1 if skip_first else 0:]
    for name in names:
        if name in hints:
            _check_sendable(hints[name], where, f"parameter {name!r}")
    if "return" in hints:
        _check_sendable(hints["return"], where, "the result")


def describe_callable(
    function: Callable[..., Any], *, kind: Kind, skip_first: bool = False
) -> dict[str, Any]:
    """Parameters, response and item types of ``function`` for a spec of ``kind`` (the
    keyword arguments of ``FunctionSpec`` beyond name, kind and version)."""
    where = getattr(function, "__qualname__", repr(function))
    try:
        hints = typing.get_type_hints(function)
    except Exception as error:
        raise UnresolvedAnnotation(_unresolved(function, where, error)) from error
    parameters = _annotated_parameters(function, hints, where, skip_first)
    if "return" not in hints:
        raise TypeError(f"{where}: the return type must be annotated")
    returned = hints["return"]
    _check_sendable(returned, where, "the result")
    if kind == "reverse_pipe":
        if not parameters:
            raise TypeError(f"{where}: a reverse pipe takes the stream as its last parameter")
        stream = parameters.pop()
        item = _stream_item(stream.annotation, f"{where}: the stream parameter {stream.name!r}")
        return {"parameters": parameters, "response": returned, "item": item,
                "stream_parameter": stream.name}
    response, item = _result_types(kind, returned, where)
    return {"parameters": parameters, "response": response, "item": item}


def _annotated_parameters(
    function: Callable[..., Any], hints: dict[str, Any], where: str, skip_first: bool
) -> list[Parameter]:
    """``function``'s parameters with their resolved types; each must be annotated with a
    type that can be sent (no ``*args``, no ``**kwargs``)."""
    parameters = list(inspect.signature(function).parameters.values())
    if skip_first:
        parameters = parameters[1:]
    result: list[Parameter] = []
    for parameter in parameters:
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise TypeError(f"{where}: *args and **kwargs cannot cross the wire")
        if parameter.name not in hints:
            raise TypeError(f"{where}: parameter {parameter.name!r} has no type annotation")
        _check_sendable(hints[parameter.name], where, f"parameter {parameter.name!r}")
        result.append(Parameter(parameter.name, hints[parameter.name], parameter.default))
    return result


def _result_types(kind: Kind, returned: Any, where: str) -> tuple[Any, Any]:
    """The response and item types a function of ``kind`` (not a reverse pipe) declares by
    its return annotation ``returned``."""
    if kind == "rpc":
        return returned, None
    if kind == "pipe":
        return None, _stream_item(returned, f"{where}: the result of a pipe")
    if kind == "state":
        arguments = typing.get_args(returned)
        if typing.get_origin(returned) is not tuple or len(arguments) != 2:
            raise TypeError(
                f"{where}: a state function returns tuple[S, AsyncIterator[U]], "
                f"got {type_name(returned)}"
            )
        return arguments[0], _stream_item(arguments[1], f"{where}: the updates of a state function")
    if kind == "one_way" and returned is not None and returned is not type(None):
        raise TypeError(f"{where}: a one-way function returns None")
    return None, None
