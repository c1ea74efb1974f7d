"""#11.6, more cases: exceptions by type across the wire (rpc/_exceptions.py).

A class whose ``__init__`` takes keyword-only arguments, a nested class, arguments that cannot
be sent, the library's own errors (never rebuilt), and an error record from a peer that sends
only the first four fields."""

from __future__ import annotations

import pickle
import sys

import msgspec
import pytest

import rpc_parallel as rp
from rpc_parallel.rpc import frames
from rpc_parallel.rpc._exceptions import rebuild


class Rejected(Exception):
    """``__init__`` takes a keyword-only argument: rebuilding must not call it."""

    def __init__(self, *, reason: str) -> None:
        super().__init__(f"rejected: {reason}")
        self.reason = reason


class Outer:
    class Inner(ValueError):
        """A nested class: found by its qualified name ``module.Outer.Inner``."""


class Opaque:
    pass


class Carries(Exception):
    """Carries an argument that cannot be sent."""


class Raiser(rp.Worker[None]):
    @rp.rpc
    async def keyword_only(self) -> None:
        raise Rejected(reason="too late")

    @rp.rpc
    async def nested(self) -> None:
        raise Outer.Inner("inner")

    @rp.rpc
    async def unsendable_argument(self) -> None:
        error = Carries(Opaque(), 3)
        error.count = 3  # type: ignore[attr-defined]
        error.thing = Opaque()  # type: ignore[attr-defined]
        raise error

    @rp.rpc
    async def library_error(self) -> None:
        raise rp.WorkerDied("not this worker")

    @rp.rpc
    def in_a_thread(self) -> None:
        raise LookupError("from a plain def")


@pytest.mark.timeout(30)
async def test_keyword_only_init_nested_class_and_plain_def() -> None:
    async with await Raiser.spawn(None) as w:
        with pytest.raises(Rejected) as rejected:
            await w.run(Raiser.keyword_only)
        assert rejected.value.reason == "too late"
        assert rejected.value.args == ("rejected: too late",)
        assert isinstance(rejected.value, rp.RemoteError)
        assert rejected.value.remote_type == f"{__name__}.Rejected"
        assert "Raiser.keyword_only raised" in str(rejected.value)
        assert "raise Rejected" in rejected.value.remote_traceback

        with pytest.raises(Outer.Inner) as inner:
            await w.run(Raiser.nested)
        assert inner.value.args == ("inner",) and isinstance(inner.value, ValueError)

        with pytest.raises(LookupError):
            await w.run(Raiser.in_a_thread)


@pytest.mark.timeout(30)
async def test_unsendable_arguments_fall_back_to_the_message() -> None:
    async with await Raiser.spawn(None) as w:
        with pytest.raises(Carries) as caught:
            await w.run(Raiser.unsendable_argument)
        error = caught.value
        assert len(error.args) == 1 and "Opaque" in error.args[0]  # the message text
        assert error.count == 3  # type: ignore[attr-defined]  # sendable attributes arrive
        assert not hasattr(error, "thing")


@pytest.mark.timeout(30)
async def test_the_library_s_own_errors_are_never_rebuilt() -> None:
    async with await Raiser.spawn(None) as w:
        with pytest.raises(rp.RemoteError) as caught:
            await w.run(Raiser.library_error)
        assert not isinstance(caught.value, rp.WorkerDied)
        assert caught.value.remote_type == "rpc_parallel.errors.WorkerDied"


def test_the_subclass_is_made_once_per_class() -> None:
    first = rebuild("f", "KeyError", "'a'", "", msgspec.msgpack.encode(["a"]), b"")
    second = rebuild("g", "KeyError", "'b'", "", msgspec.msgpack.encode(["b"]), b"")
    assert type(first) is type(second) and isinstance(first, KeyError)
    assert first.args == ("a",) and second.function == "g"


def test_a_module_not_yet_imported_is_not_imported() -> None:
    if "xml.dom.minicompat" in sys.modules:
        pytest.skip("xml.dom.minicompat is imported already in this process")
    error = rebuild("f", "xml.dom.minicompat.EmptyNodeList", "m", "", b"", b"")
    assert type(error) is rp.RemoteError and error.remote_type == "xml.dom.minicompat.EmptyNodeList"
    assert "xml.dom.minicompat" not in sys.modules


def test_an_error_record_with_only_the_first_four_fields_decodes() -> None:
    """A peer from before the qualified type name and args: its record still decodes."""
    old = msgspec.msgpack.encode(["remote", "KeyError", "'k'", "Traceback ..."])
    info = frames.ERROR_DECODER.decode(old)
    assert info.qualified_type == "" and info.args == b"" and info.attributes == b""
    error = rebuild("f", info.qualified_type or info.type_name, info.message, info.traceback,
                    info.args, info.attributes)
    assert isinstance(error, KeyError) and error.args == ("'k'",)


def test_a_rebuilt_error_pickles_as_itself() -> None:
    error = rebuild("Raiser.keyword_only", f"{__name__}.Rejected", "rejected: late", "tb",
                    msgspec.msgpack.encode(["rejected: late"]), msgspec.msgpack.encode({"reason": "late"}))
    assert isinstance(error, Rejected)
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, Rejected) and isinstance(copy, rp.RemoteError)
    assert copy.args == error.args and copy.reason == "late"  # type: ignore[attr-defined]
    assert str(copy) == str(error)
