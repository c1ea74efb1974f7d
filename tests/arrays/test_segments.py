"""The shared-memory path of the array codec, in one process: segments are created by the
sender, taken (mapped and unlinked) by the receiver, and swept when a connection closes."""

from __future__ import annotations

import os
import secrets

import msgspec
import numpy as np
import pytest

import rpc_parallel as rp
from rpc_parallel.rpc import _arrays, _segments
from rpc_parallel.rpc.functions import FunctionSpec, make_decoder, make_encoder

pytestmark = pytest.mark.skipif(not _segments.available(), reason="needs /dev/shm")


def ours() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("rpcp-")}


def pair() -> tuple[_segments.Segments, _segments.Segments]:
    a, b = secrets.token_hex(8), secrets.token_hex(8)
    return _segments.Segments(a, b), _segments.Segments(b, a)


def test_large_array_travels_by_name_and_is_unlinked_when_taken() -> None:
    before = ours()
    sender, receiver = pair()
    big = np.arange(2**18, dtype=np.float64).reshape(512, 512)  # 2 MiB
    payload = make_encoder(sender).encode((big,))
    assert len(payload) < 200  # the name, dtype and shape: not the data
    assert len(ours() - before) == 1
    (back,) = make_decoder(tuple[np.ndarray]).decode(payload)
    assert ours() == before  # taken: unlinked, only the mapping holds it
    np.testing.assert_array_equal(back, big)
    assert back.flags.writeable and back.dtype == big.dtype
    back[0, 0] = -1.0  # its own memory: the sender's array is untouched
    assert big[0, 0] == 0.0
    sender.close()
    receiver.close()


def test_small_arrays_and_no_segments_stay_in_band() -> None:
    before = ours()
    sender, _ = pair()
    small = np.ones(10)
    assert len(make_encoder(sender).encode(small)) > small.nbytes
    big = np.ones(2**18)
    assert len(make_encoder(None).encode(big)) > big.nbytes  # a TCP connection: in band
    assert ours() == before


def test_fortran_big_endian_and_strided_through_shared_memory() -> None:
    sender, _ = pair()
    decoder = make_decoder(np.ndarray)
    for sample in (
        np.asfortranarray(np.arange(2**18, dtype=">f8").reshape(512, 512)),
        np.arange(2**19, dtype=np.int32).reshape(1024, 512)[::2, ::3],
    ):
        back = decoder.decode(make_encoder(sender).encode(sample))
        assert back.dtype.str == sample.dtype.str and back.shape == sample.shape
        np.testing.assert_array_equal(back, sample)
    sender.close()


def test_close_sweeps_both_sides_segments() -> None:
    before = ours()
    sender, receiver = pair()
    encoder = make_encoder(sender)
    for _ in range(3):
        encoder.encode(np.ones(2**18))  # never decoded: a message lost with the connection
    assert len(ours() - before) == 3
    receiver.close()  # the side that survives sweeps the peer's segments too
    assert ours() == before
    sender.close()
    assert make_encoder(sender).encode(np.ones(2**18))  # closed: in band, no new segment
    assert ours() == before


def test_release_and_a_missing_or_foreign_segment() -> None:
    before = ours()
    sender, _ = pair()
    payload = make_encoder(sender).encode(np.ones(2**18))
    names = ours() - before
    assert len(names) == 1
    _segments.release(names.pop())
    assert ours() == before
    spec = FunctionSpec("f", kind="rpc", response=np.ndarray)
    with pytest.raises(rp.ProtocolError, match="is gone"):
        spec.decode_response(memoryview(payload))
    forged = msgspec.msgpack.encode(msgspec.msgpack.Ext(
        _arrays.SHARED, msgspec.msgpack.encode(["<f8", [1], False, "../etc/passwd"])))
    with pytest.raises(rp.ProtocolError, match="not the name of an rpc_parallel segment"):
        spec.decode_response(memoryview(forged))
    sender.close()


def test_malformed_in_band_arrays_are_refused() -> None:
    spec = FunctionSpec("f", kind="rpc", response=np.ndarray)
    good = bytes(_arrays.to_wire(np.ones(4), None).data)
    for data, message in ((b"\x01", "truncated"), (good[:-3], "arrived with")):
        with pytest.raises(rp.ProtocolError, match=message):
            spec.decode_response(memoryview(msgspec.msgpack.encode(
                msgspec.msgpack.Ext(_arrays.ARRAY, data))))
    header = msgspec.msgpack.encode(["|O", [1], False])
    objects = len(header).to_bytes(4, "little") + header + bytes(8)
    with pytest.raises(rp.ProtocolError, match="cannot be received"):
        spec.decode_response(memoryview(msgspec.msgpack.encode(msgspec.msgpack.Ext(1, objects))))


def test_only_segments_of_open_local_connections_are_taken() -> None:
    sender, receiver = pair()
    payload = make_encoder(sender).encode(np.ones(2**18))
    decoder = make_decoder(np.ndarray)
    receiver.close()  # the receiving side no longer knows this peer: a stale or foreign name
    with pytest.raises(msgspec.ValidationError, match="not from the peer of an open connection"):
        decoder.decode(payload)
    sender.close()
    assert not [name for name in ours() if sender._own in name]


def test_a_message_that_fails_to_decode_releases_its_segments() -> None:
    before = ours()
    sender, receiver = pair()
    spec = FunctionSpec("f", kind="rpc", parameters=[("n", int), ("a", np.ndarray)])
    payload = make_encoder(sender).encode(("not an int", np.ones(2**18)))
    assert len(ours() - before) == 1
    with pytest.raises(rp.ProtocolError, match="argument 'n'"):
        spec.decode_arguments(memoryview(payload))
    assert ours() == before  # decoding never reached the array: released all the same
    sender.close()
    receiver.close()


def test_an_encode_that_fails_halfway_discards_its_segments() -> None:
    before = ours()
    sender, receiver = pair()
    mark = sender.mark
    with pytest.raises(TypeError, match="cannot be sent"):
        make_encoder(sender).encode((np.ones(2**18), np.ones(2**18), object()))
    assert len(ours() - before) == 2
    sender.discard_after(mark)  # what the connection does when a frame fails to encode
    assert ours() == before
    sender.close()
    receiver.close()
