"""numpy arrays and scalars on the wire (decision 0022).

Imported only once numpy is (``functions`` looks numpy up in ``sys.modules`` before it
imports this module), so ``import rpc_parallel`` never imports numpy.

Wire forms, both MessagePack extension values, so that an array is recognised wherever it
sits in a message (an argument, a field of a struct, an item of a list, a value declared
``Any``):

- ``ARRAY`` (ext 1), in band: ``u32`` header length, the header, then the raw bytes of the
  array in its memory order;
- ``SHARED`` (ext 2), for arrays of at least ``SHARED_MEMORY_THRESHOLD`` bytes on a
  connection between processes of one host: the header only, naming a shared-memory
  segment (``_segments``) that holds the bytes.

The header is the MessagePack array ``[descr, shape, fortran]`` (+ ``name`` for SHARED):
``descr`` is numpy's own ``.npy`` description of the dtype (a string such as ``"<f8"`` or
``">i4"``, or a list of fields), ``shape`` a list of sizes, ``fortran`` whether the bytes are
in column-major order. Byte order and memory order travel as they are: what arrives equals
what was sent, dtype included. Arrays of Python objects (``dtype=object``) cannot be sent.

numpy scalars: ``bool_``, integers and ``float16/32/64`` travel as the Python number they
stand for (so they pass where ``int`` or ``float`` is declared); the others (complex,
``longdouble``, ``datetime64`` ...) as a 0-d ``ARRAY``. Declared as a numpy scalar type, a
value is accepted only if that type holds it exactly.
"""

from __future__ import annotations

import os
import struct
import typing
import weakref
from typing import Any, Literal

import msgspec
import numpy as np
from numpy.lib import format as npy_format

from . import _segments
from ._frame_buffers import FrameBuffer, give_back_buffer
from ._segments import Segments

ARRAY = 1
SHARED = _segments.SHARED
SHARED_MEMORY_THRESHOLD = 1 << 20
"""Arrays of at least this many bytes go through shared memory between local processes.
Below it, a segment's system calls (open, pwrite, the state word on both sides) cost about
as much as copying through the socket (decision 0022)."""

_LENGTH = struct.Struct("<I")
_EXT32 = struct.Struct(">BIb")
SPLICE_THRESHOLD = 64 * 1024
"""In-band arrays of at least this many bytes are copied into the frame by the connection
(``splice``): one copy, aligned; smaller ones in the extension value (two copies, cheap)."""
ALIGNMENT = 64
_MARK = os.urandom(16)
"""Starts a placeholder in an encoded message: random, so that no other bytes match it."""
_HEADER_ENCODER = msgspec.msgpack.Encoder()


class _Header(msgspec.Struct, array_like=True):
    """An in-band array's header; ``padding`` (zero bytes) places the data that follows at an
    aligned offset of the frame."""

    descr: Any
    shape: list[int]
    fortran: bool
    padding: bytes = b""


_HEADER_DECODER = msgspec.msgpack.Decoder(_Header)
_SHARED_DECODER = msgspec.msgpack.Decoder(tuple[Any, list[int], bool, str])
_PYTHON_NUMBERS: tuple[type, ...] = (np.bool_, np.integer, np.float16, np.float32, np.float64)


# ----------------------------------------------------------------------------- sending


def to_wire(value: np.ndarray[Any, Any] | np.generic, segments: Segments | None,
            deferred: list[tuple[bytes, memoryview]] | None = None) -> Any:
    """The wire form of a numpy array or scalar (``TypeError`` if it cannot be sent).

    ``deferred``: a connection's list of arrays whose bytes it copies into the frame itself
    (``splice``) once the message is encoded, aligned, with no copy of their own before."""
    if isinstance(value, np.generic):
        if isinstance(value, _PYTHON_NUMBERS):
            return value.item()
        if isinstance(value, (np.str_, np.bytes_)):
            return value.item()
        value = np.asarray(value)
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError("masked arrays cannot be sent: send .data and .mask as two arrays")
    array = np.asarray(value)
    if array.dtype.hasobject:
        raise TypeError(
            f"arrays of dtype {array.dtype} cannot be sent: their elements are Python objects; "
            "convert to a numeric, string or structured dtype"
        )
    fortran = array.flags.f_contiguous and not array.flags.c_contiguous
    if not (fortran or array.flags.c_contiguous):
        array = np.ascontiguousarray(array)  # a strided view: its elements, made contiguous
    header = [npy_format.dtype_to_descr(array.dtype), list(array.shape), bool(fortran)]
    if segments is not None and array.nbytes >= SHARED_MEMORY_THRESHOLD and not segments.closed:
        name = _share(array, segments)
        if name is not None:
            return msgspec.msgpack.Ext(SHARED, _HEADER_ENCODER.encode([*header, name]))
    if deferred is not None and array.nbytes >= SPLICE_THRESHOLD:
        encoded = _HEADER_ENCODER.encode(header)
        deferred.append((encoded, _raw_bytes(array)))
        return msgspec.msgpack.Ext(ARRAY, _MARK + encoded)  # a placeholder, until ``splice``
    return _in_band(array, header)


def _share(array: np.ndarray[Any, Any], segments: Segments) -> str | None:
    """Lend a segment holding ``array``'s bytes; its name, or None if /dev/shm has no room."""
    try:
        return segments.lend(_raw_bytes(array), array.__array_interface__["data"][0])
    except OSError:
        return None  # /dev/shm is full or missing: the bytes go in band instead.


def _in_band(array: np.ndarray[Any, Any], header: list[Any]) -> msgspec.msgpack.Ext:
    encoded = _HEADER_ENCODER.encode(header)
    start = _LENGTH.size + len(encoded)
    data = bytearray(start + array.nbytes)
    _LENGTH.pack_into(data, 0, len(encoded))
    data[_LENGTH.size : start] = encoded
    if array.nbytes:
        data[start:] = _raw_bytes(array)
    return msgspec.msgpack.Ext(ARRAY, data)


def splice(out: bytearray, payload_start: int, deferred: list[tuple[bytes, memoryview]]) -> None:
    """Replace each placeholder of ``deferred`` in the message encoded at ``payload_start``
    of ``out`` by its in-band array: the header, padding so that the data starts at a multiple
    of ``ALIGNMENT`` from the payload's start (a receiver can use it where it lies), and the
    data, copied from the array once. Empties ``deferred``."""
    search = payload_start
    try:
        for encoded, raw in deferred:
            at = out.find(_MARK, search)
            size = len(_MARK) + len(encoded)
            lead = 3 if size < 0x100 else 4 if size < 0x1_0000 else 6  # msgpack ext8/16/32
            begin = at - lead
            if at < 0 or out[begin] not in (0xC7, 0xC8, 0xC9) or out[at - 1] != ARRAY:
                raise RuntimeError("an array's placeholder is missing from its message")
            data_at = begin + 6 + _LENGTH.size + len(encoded) + 2  # ext32, length, header, bin8
            pad = -(data_at - payload_start) % ALIGNMENT
            header = b"\x94" + encoded[1:] + bytes((0xC4, pad)) + bytes(pad)  # + padding
            ext_size = _LENGTH.size + len(header) + raw.nbytes
            tail = bytes(out[at + size :])
            del out[begin:]
            out += _EXT32.pack(0xC9, ext_size, ARRAY)
            out += _LENGTH.pack(len(header))
            out += header
            out += raw  # the one copy of the data on this side
            search = len(out)
            out += tail
    finally:
        deferred.clear()


def _raw_bytes(array: np.ndarray[Any, Any]) -> memoryview:
    """The bytes of a contiguous (C or Fortran) array in memory order, without a copy."""
    flat = array.reshape(-1, order="A") if array.ndim else array.reshape(1)
    return memoryview(flat.view(np.uint8))  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


# ----------------------------------------------------------------------------- receiving


def from_ext(code: int, data: memoryview) -> np.ndarray[Any, Any]:
    """The array an ``ARRAY`` or ``SHARED`` extension value stands for (``ValueError`` if
    it is malformed). ``data`` is a view of the received frame, so an in-band array is
    copied into memory of its own; a shared one keeps the segment's mapping."""
    if code == SHARED:
        descr, shape, fortran, name = _SHARED_DECODER.decode(data)
        dtype = _dtype(descr)
        size = _size(dtype, shape)
        try:
            memory = _segments.take(name, size)
        except OSError as error:
            raise ValueError(str(error)) from None
        # The array's base is ``memory`` (numpy keeps it alive as long as any view).
        flat: np.ndarray[Any, Any] = np.asarray(memory).view(dtype)
        return flat.reshape(tuple(shape), order="F" if fortran else "C")
    if len(data) < _LENGTH.size:
        raise ValueError("a truncated array")
    (length,) = _LENGTH.unpack_from(data, 0)
    start = _LENGTH.size + length
    header = _HEADER_DECODER.decode(data[_LENGTH.size : start])
    descr, shape, fortran = header.descr, header.shape, header.fortran
    dtype = _dtype(descr)
    size = _size(dtype, shape)
    if len(data) - start != size:
        raise ValueError(f"an array of {size} bytes arrived with {len(data) - start}")
    order: Literal["C", "F"] = "F" if fortran else "C"
    owner = data.obj
    if type(owner) is FrameBuffer and size and 2 * size >= owner.frame_size:
        # A large frame's own buffer: the array's memory, no copy (the one copy was the
        # socket's into it), if the sender placed the bytes aligned for the dtype, and if
        # the array is most of the frame (it keeps the whole buffer alive).
        address = np.frombuffer(data, np.uint8, size, start).ctypes.data
        if address % dtype.alignment == 0:
            frame_memory = _FrameMemory(owner, address, size)
            owner.viewed = True  # not reused for other frames until the array is garbage
            weakref.finalize(frame_memory, give_back_buffer, owner)
            viewed: np.ndarray[Any, Any] = np.asarray(frame_memory).view(dtype)
            return viewed.reshape(tuple(shape), order=order)
    array: np.ndarray[Any, Any] = np.empty(tuple(shape), dtype, order=order)
    if size:
        _raw_bytes(array)[:] = data[start:]
    return array


class _FrameMemory:
    """The memory of an array received in a large frame's buffer: numpy reads it through
    ``__array_interface__`` and keeps this object as the base of every view; when the last
    is garbage, the buffer goes back for later frames (``frames.give_back_buffer``)."""

    __slots__ = ("__array_interface__", "__weakref__", "_buffer")

    def __init__(self, buffer: FrameBuffer, address: int, size: int) -> None:
        self._buffer = buffer  # keeps the mapping while the array exists
        self.__array_interface__ = {
            "version": 3, "shape": (size,), "typestr": "|u1", "data": (address, False),
        }


def _dtype(descr: Any) -> np.dtype[Any]:
    try:
        dtype = npy_format.descr_to_dtype(descr)
    except Exception as error:  # whatever a malformed description makes numpy raise
        raise ValueError(f"an array with an invalid dtype {repr(descr)[:200]}: {error}") from None
    if dtype.hasobject:
        raise ValueError(f"arrays of dtype {dtype} cannot be received (Python objects)")
    return dtype


def _size(dtype: np.dtype[Any], shape: list[int]) -> int:
    size = dtype.itemsize
    for extent in shape:
        if extent < 0:
            raise ValueError(f"an array with a negative extent in its shape {shape}")
        size *= extent
    return size


# ----------------------------------------------------------------------------- checking

def is_numpy_type(cls: type) -> bool:
    """Whether values declared as ``cls`` travel by this module's codec."""
    return issubclass(cls, (np.ndarray, np.generic)) and not issubclass(cls, np.ma.MaskedArray)


def check(expected: Any, value: Any) -> Any:
    """``value`` (as decoded) if it is what ``expected`` declares; else ``TypeError`` with a
    message naming the expected and the received dtype."""
    origin = typing.get_origin(expected) or expected
    if isinstance(origin, type) and issubclass(origin, np.ndarray):
        return _check_array(expected, value)
    if isinstance(origin, type) and issubclass(origin, np.generic):
        return _check_scalar(origin, value)
    raise TypeError(f"type {expected!r} cannot be received")


def _declared_scalar(expected: Any) -> type | None:
    """The scalar type of ``NDArray[np.float64]`` and the like; None if any dtype goes."""
    arguments = typing.get_args(expected)
    if len(arguments) != 2:
        return None
    dtype_argument = arguments[1]
    inner = typing.get_args(dtype_argument)
    if typing.get_origin(dtype_argument) is not np.dtype or not inner:
        return None
    scalar = typing.get_origin(inner[0]) or inner[0]  # np.floating[Any] -> np.floating
    return scalar if isinstance(scalar, type) and issubclass(scalar, np.generic) else None


def _check_array(expected: Any, value: Any) -> Any:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"expected a numpy array, got {_received(value)}")
    scalar = _declared_scalar(expected)
    if scalar is not None and not issubclass(value.dtype.type, scalar):
        raise TypeError(
            f"expected an array of dtype {_scalar_name(scalar)}, got an array of dtype "
            f"{value.dtype} (convert with .astype(...) before sending)"
        )
    return value


def _check_scalar(scalar: type, value: Any) -> Any:
    name = _scalar_name(scalar)
    if isinstance(value, np.ndarray):
        if value.shape != () or not issubclass(value.dtype.type, scalar):
            raise TypeError(f"expected a numpy {name}, got an array of dtype {value.dtype} "
                            f"and shape {value.shape}")
        return value[()]
    if issubclass(scalar, np.bool_):
        if type(value) is not bool:
            raise TypeError(f"expected a numpy {name}, got {_received(value)}")
        return np.bool_(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a numpy {name}, got {_received(value)}")
    if issubclass(scalar, np.integer):
        limits = np.iinfo(scalar)
        if not isinstance(value, int) or not limits.min <= value <= limits.max:
            raise TypeError(f"expected a numpy {name}, got {value!r}, which it cannot hold")
        return scalar(value)
    if issubclass(scalar, (np.floating, np.complexfloating)):
        converted: Any = None
        try:
            converted = scalar(value)
            exact = complex(converted) == value or value != value  # NaN is held as NaN
        except OverflowError:
            exact = False
        if not exact:
            raise TypeError(f"expected a numpy {name}, got {value!r}, which it cannot hold "
                            "exactly")
        return converted
    raise TypeError(f"expected a numpy {name}, got {_received(value)}")


def _scalar_name(scalar: type) -> str:
    try:
        return np.dtype(scalar).name
    except TypeError:
        return scalar.__name__  # an abstract type: np.floating, np.integer ...


def _received(value: Any) -> str:
    return f"a value of type {type(value).__name__}"


def type_name(annotation: Any) -> str | None:
    """A stable name for an array annotation (``numpy.ndarray[float64]``), the same across
    numpy versions whose typing spells the shape differently; None for other annotations."""
    origin = typing.get_origin(annotation) or annotation
    if not (isinstance(origin, type) and issubclass(origin, np.ndarray)):
        return None
    scalar = _declared_scalar(annotation)
    return f"numpy.ndarray[{_scalar_name(scalar)}]" if scalar is not None else "numpy.ndarray"
