"""The shared-memory path of the array codec, in one process: the sender lends segments,
the receiver maps them and gives them back when its arrays are garbage, the sender reuses
them, and both sides sweep every segment when a connection closes."""

from __future__ import annotations

import gc
import os
import re
import secrets
import subprocess
import threading
import time

import msgspec
import numpy as np
import pytest

import rpc_parallel as rp
from rpc_parallel.rpc import _arrays, _segments
from rpc_parallel.rpc.functions import FunctionSpec, make_decoder, make_encoder

from .support import segments

pytestmark = pytest.mark.skipif(not _segments.available(), reason="needs /dev/shm")

BIG = 2**19  # float64 items: 4 MiB, over the threshold and big enough for huge pages
MIB = 2**20


def kernel_at_least(major: int, minor: int) -> bool:
    numbers = re.findall(r"\d+", os.uname().release)[:2]
    return tuple(int(number) for number in numbers) >= (major, minor)


HUGE_PAGES = kernel_at_least(6, 1)  # MADV_COLLAPSE on tmpfs


def ours() -> set[str]:
    """The segments of this process (not other programs' on the host)."""
    return segments()


def state(name: str) -> bytes:
    with open(f"/dev/shm/{name}", "rb") as file:
        return file.read(8)


def mappings_of(name: str) -> list[dict[str, str]]:
    """This process's mappings of the segment ``name``: the fields /proc/self/smaps gives."""
    found: list[dict[str, str]] = []
    with open("/proc/self/smaps") as file:
        for line in file:
            head, _, value = line.partition(":")
            if " " not in head:  # a field of the mapping above
                if found and found[-1]["path"].endswith(f"/{name}"):
                    found[-1][head] = value.strip()
            else:
                found.append({"path": line.split()[-1]})
    return [fields for fields in found if fields["path"].endswith(f"/{name}")]


@pytest.fixture(params=["huge pages", "small pages"])
def pair(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
         ) -> tuple[_segments.Segments, _segments.Segments]:
    """A sender and a receiver; their segments have huge pages where the kernel can, or are
    made as on a kernel that cannot (then the sender writes with ``pwrite`` and the receiver
    keeps its mappings)."""
    if request.param == "small pages":
        monkeypatch.setattr(_segments, "_huge_pages", False)
    before = ours()
    a, b = secrets.token_hex(8), secrets.token_hex(8)
    sender, receiver = _segments.Segments(a, b), _segments.Segments(b, a)
    yield sender, receiver
    sender.close()
    receiver.close()
    assert ours() == before


def test_large_array_travels_by_name_and_its_segment_is_reused(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    before = ours()
    big = np.arange(BIG, dtype=np.float64).reshape(1024, 512)
    encoder, decoder = make_encoder(sender), make_decoder(tuple[np.ndarray])
    payload = encoder.encode((big,))
    assert len(payload) < 200  # the name, dtype and shape: not the data
    (name,) = ours() - before
    assert state(name) == _segments.LENT
    (back,) = decoder.decode(payload)
    np.testing.assert_array_equal(back, big)
    assert back.flags.writeable and back.dtype == big.dtype
    back[0, 0] = -1.0  # its own memory: the sender's array is untouched
    assert big[0, 0] == 0.0
    view = back[1:]
    del back
    gc.collect()
    assert state(name) == _segments.LENT  # a view still uses the memory
    del view
    gc.collect()
    assert state(name) == _segments.FREE  # given back when the last view is garbage
    (again,) = decoder.decode(encoder.encode((big,)))
    assert ours() - before == {name}  # reused: no new segment
    np.testing.assert_array_equal(again, big)


def test_a_segment_still_in_use_is_never_overwritten(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    encoder, decoder = make_encoder(sender), make_decoder(np.ndarray)
    first = decoder.decode(encoder.encode(np.full(BIG, 1.0)))
    second = decoder.decode(encoder.encode(np.full(BIG, 2.0)))
    assert float(first[-1]) == 1.0 and float(second[-1]) == 2.0
    assert len(ours()) >= 2


def test_small_arrays_and_no_segments_stay_in_band(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    before = ours()
    small = np.ones(10)
    assert len(make_encoder(sender).encode(small)) > small.nbytes
    big = np.ones(BIG)
    assert len(make_encoder(None).encode(big)) > big.nbytes  # a TCP connection: in band
    assert ours() == before


def test_fortran_big_endian_and_strided_through_shared_memory(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    decoder = make_decoder(np.ndarray)
    for sample in (
        np.asfortranarray(np.arange(BIG, dtype=">f8").reshape(1024, 512)),
        np.arange(2 * BIG, dtype=np.int32).reshape(2048, 512)[::2, ::3],
    ):
        back = decoder.decode(make_encoder(sender).encode(sample))
        assert back.dtype.str == sample.dtype.str and back.shape == sample.shape
        np.testing.assert_array_equal(back, sample)


def test_close_sweeps_both_sides_segments() -> None:
    before = ours()
    a, b = secrets.token_hex(8), secrets.token_hex(8)
    sender, receiver = _segments.Segments(a, b), _segments.Segments(b, a)
    encoder = make_encoder(sender)
    for _ in range(3):
        encoder.encode(np.ones(BIG))  # never decoded: messages lost with the connection
    assert len(ours() - before) == 3
    receiver.close()  # the side that survives sweeps the peer's segments too
    assert ours() == before
    sender.close()
    assert make_encoder(sender).encode(np.ones(BIG))  # closed: in band, no new segment
    assert ours() == before


@pytest.mark.timeout(60)
def test_a_sweep_from_another_thread_leaves_no_segment_being_lent() -> None:
    """A worker whose master is gone sweeps from its stdin watcher's thread and ends the
    process at once, while its event loop's thread may be lending: no segment created
    meanwhile may be missed, and the lender gets an ``OSError`` (the array then goes in band),
    nothing else."""
    buffer = np.zeros(1 << 16, dtype=np.uint8)
    data = memoryview(buffer)
    failures: list[BaseException] = []
    for round_ in range(200):
        own, peer = secrets.token_hex(8), secrets.token_hex(8)
        segments = _segments.Segments(own, peer)
        lending = threading.Event()

        def lend(segments: _segments.Segments = segments, lending: threading.Event = lending
                 ) -> None:
            lending.set()
            while True:
                try:
                    segments.lend(data, buffer.ctypes.data)
                except OSError:
                    return  # closed or swept: the array goes in band (_arrays._share)
                except BaseException as error:
                    failures.append(error)
                    return

        thread = threading.Thread(target=lend)
        thread.start()
        assert lending.wait(10.0)
        time.sleep(0.001 * (round_ % 5))  # the sweep lands at varied points of a lend
        _segments.sweep_all()
        thread.join(10.0)
        assert not thread.is_alive()
        left = [name for name in os.listdir(_segments.SHM_DIRECTORY)
                if name.startswith("rpcp-") and f"-{own}-" in name]
        for name in left:
            os.unlink(os.path.join(_segments.SHM_DIRECTORY, name))
        assert not left, f"round {round_}: the sweep missed {left}"
        assert not failures, f"round {round_}: the lender failed with {failures[0]!r}"


def test_released_messages_give_their_segments_back(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    before = ours()
    payload = make_encoder(sender).encode([np.ones(BIG), {"x": np.ones(BIG)}])
    names = ours() - before
    assert len(names) == 2 and {state(n) for n in names} == {_segments.LENT}
    _segments.release_in(memoryview(payload))  # e.g. the answer to a cancelled call
    assert {state(n) for n in names} == {_segments.FREE}
    spec = FunctionSpec("f", kind="rpc", response=np.ndarray)
    with pytest.raises(rp.ProtocolError, match="is not lent"):
        spec.decode_response(memoryview(make_encoder(None).encode(msgspec.msgpack.Ext(
            _arrays.SHARED, msgspec.msgpack.encode(["<f8", [BIG], False, sorted(names)[0]])))))
    forged = msgspec.msgpack.encode(msgspec.msgpack.Ext(
        _arrays.SHARED, msgspec.msgpack.encode(["<f8", [1], False, "../etc/passwd"])))
    with pytest.raises(rp.ProtocolError, match="not the name of an rpc_parallel segment"):
        spec.decode_response(memoryview(forged))


def test_only_segments_of_open_local_connections_are_taken() -> None:
    before = ours()
    a, b = secrets.token_hex(8), secrets.token_hex(8)
    sender, receiver = _segments.Segments(a, b), _segments.Segments(b, a)
    payload = make_encoder(sender).encode(np.ones(BIG))
    receiver.close()  # this side no longer knows the peer: a stale or foreign name
    with pytest.raises(msgspec.ValidationError, match="not from the peer of an open connection"):
        make_decoder(np.ndarray).decode(payload)
    sender.close()
    assert ours() == before


def test_a_message_that_fails_to_decode_gives_its_segments_back(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    before = ours()
    spec = FunctionSpec("f", kind="rpc", parameters=[("n", int), ("a", np.ndarray)])
    payload = make_encoder(sender).encode(("not an int", np.ones(BIG)))
    (name,) = ours() - before
    with pytest.raises(rp.ProtocolError, match="argument 'n'"):
        spec.decode_arguments(memoryview(payload))
    assert state(name) == _segments.FREE  # decoding never reached the array


def test_an_encode_that_fails_halfway_gives_its_segments_back(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    before = ours()
    mark = sender.mark
    with pytest.raises(TypeError, match="cannot be sent"):
        make_encoder(sender).encode((np.ones(BIG), np.ones(BIG), object()))
    names = ours() - before
    assert len(names) == 2 and {state(n) for n in names} == {_segments.LENT}
    sender.discard_after(mark)  # what the connection does when a frame fails to encode
    assert {state(n) for n in names} == {_segments.FREE}


def test_free_segments_kept_for_reuse_are_bounded(pair) -> None:  # type: ignore[no-untyped-def]
    sender, _ = pair
    before = ours()
    encoder, decoder = make_encoder(sender), make_decoder(list[np.ndarray])
    held = decoder.decode(encoder.encode([np.ones(BIG * (k + 1)) for k in range(8)]))
    assert len(ours() - before) == 8
    del held
    gc.collect()
    decoder.decode(encoder.encode([np.ones(BIG * 20)]))  # fits none: a new one, and a trim
    assert len(ours() - before) <= _segments.KEEP_FREE + 1


def test_malformed_in_band_arrays_are_refused() -> None:
    spec = FunctionSpec("f", kind="rpc", response=np.ndarray)
    good = bytes(_arrays.to_wire(np.ones(4), None).data)
    for data, message in ((b"\x01", "truncated"), (good[:-3], "arrived with")):
        with pytest.raises(rp.ProtocolError, match=message):
            spec.decode_response(memoryview(msgspec.msgpack.encode(
                msgspec.msgpack.Ext(_arrays.ARRAY, data))))
    for descr in (["x"], [[1, 2, 3, 4]], "not a dtype", {"a": 1}):
        header = msgspec.msgpack.encode([descr, [1], False])
        data = len(header).to_bytes(4, "little") + header + bytes(8)
        with pytest.raises(rp.ProtocolError, match="invalid dtype"):
            spec.decode_response(memoryview(msgspec.msgpack.encode(msgspec.msgpack.Ext(1, data))))
    header = msgspec.msgpack.encode(["|O", [1], False])
    objects = len(header).to_bytes(4, "little") + header + bytes(8)
    with pytest.raises(rp.ProtocolError, match="cannot be received"):
        spec.decode_response(memoryview(msgspec.msgpack.encode(msgspec.msgpack.Ext(1, objects))))


@pytest.fixture
def mapped_pair() -> tuple[_segments.Segments, _segments.Segments]:
    """A sender that writes through mappings it keeps (``RpcSettings.mapped_writes``)."""
    before = ours()
    a, b = secrets.token_hex(8), secrets.token_hex(8)
    sender = _segments.Segments(a, b, mapped_writes=True)
    receiver = _segments.Segments(b, a)
    yield sender, receiver
    sender.close()
    receiver.close()
    assert ours() == before


def test_mapped_writes_give_the_same_bytes(mapped_pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    sender, _ = mapped_pair
    monkeypatch.setattr(_segments, "COPY_THREADS", 3)  # split even on a 1- or 2-core host
    monkeypatch.setattr(_segments, "COPY_PART", 1 << 20)
    before = ours()
    rng = np.random.default_rng(5)
    encoder, decoder = make_encoder(sender), make_decoder(np.ndarray)
    samples = [
        rng.integers(0, 256, 5 * 2**20 + 13, dtype=np.uint8),  # odd size: an uneven last part
        np.asfortranarray(rng.random((1031, 517)).astype(">f8")),
        rng.integers(0, 2**31, (2048, 1536), dtype=np.int32)[::2, 1::3],  # strided
        rng.random((3, 700, 700)).astype(np.float32).transpose(2, 0, 1),  # neither order
        np.zeros(2**17, dtype=[("id", "<i4"), ("weight", ">f8")]),
    ]
    samples[4]["id"] = np.arange(2**17)
    for sample in samples:
        back = decoder.decode(encoder.encode(sample))
        assert back.dtype.str == sample.dtype.str and back.shape == sample.shape
        np.testing.assert_array_equal(back, sample)
        assert back.flags.writeable
        back.flat[0] = back.flat[1]  # the receiver's memory: the sender's array is untouched
        del back
        gc.collect()
    names = ours() - before
    assert names and not {n for n in names if state(n) == _segments.LENT}
    # Reused and written again through the kept mapping: the new bytes, not the old ones.
    again = decoder.decode(encoder.encode(samples[0][::-1].copy()))
    np.testing.assert_array_equal(again, samples[0][::-1])
    assert ours() - before <= names


@pytest.mark.parametrize("size", [1, 4095, 4097, 3 * 2**20 + 1, 7 * 2**20 - 3])
def test_copy_in_parts_covers_every_byte(size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_segments, "COPY_THREADS", 4)
    monkeypatch.setattr(_segments, "COPY_PART", 1 << 20)
    source = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    target = np.zeros(size + 2, dtype=np.uint8)  # a guard byte each side
    _segments._copy(target.ctypes.data + 1, source.ctypes.data, size)
    np.testing.assert_array_equal(target[1:-1], source)
    assert target[0] == 0 and target[-1] == 0


def test_a_sweep_while_a_mapped_write_is_under_way_leaves_nothing() -> None:
    """close() from another thread while lends write through mappings: each write finishes
    into a mapping it still holds, and nothing is left in /dev/shm."""
    before = ours()
    a, b = secrets.token_hex(8), secrets.token_hex(8)
    sender = _segments.Segments(a, b, mapped_writes=True)
    receiver = _segments.Segments(b, a)
    data = np.ones(4 * 2**20, dtype=np.uint8)
    errors: list[BaseException] = []

    def lend_often() -> None:
        try:
            for _ in range(200):
                sender.lend(memoryview(data), data.ctypes.data)
        except OSError:
            pass  # closed meanwhile: the array would go in band
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=lend_often)
    thread.start()
    deadline = time.monotonic() + 10
    while not ours() - before and time.monotonic() < deadline:
        time.sleep(0.001)
    sender.close()
    thread.join(30)
    receiver.close()
    assert not thread.is_alive() and not errors
    assert ours() == before


@pytest.mark.skipif(not HUGE_PAGES, reason="huge pages in tmpfs (MADV_COLLAPSE) need Linux 6.1")
def test_a_large_array_goes_through_huge_pages_mapped_only_while_used() -> None:
    before = ours()
    a, b = secrets.token_hex(8), secrets.token_hex(8)
    sender, receiver = _segments.Segments(a, b), _segments.Segments(b, a)
    encoder, decoder = make_encoder(sender), make_decoder(np.ndarray)
    try:
        big = np.arange(2 * MIB, dtype=np.float64)  # 16 MiB
        payload = encoder.encode(big)
        (name,) = ours() - before
        with open(f"/dev/shm/{name}", "rb") as file:
            assert file.read(16) == _segments.LENT + _segments.HUGE
            assert os.fstat(file.fileno()).st_size % _segments.HUGE_PAGE == 0
        assert not mappings_of(name)  # the sender mapped it for its copy only
        back = decoder.decode(payload)
        np.testing.assert_array_equal(back, big)  # (reads every page)
        (mapping,) = mappings_of(name)
        assert mapping["ShmemPmdMapped"] == mapping["Size"] == "18432 kB", mapping  # 9 huge pages
        del back
        gc.collect()
        assert not mappings_of(name) and state(name) == _segments.FREE  # unmapped with it
        again = decoder.decode(encoder.encode(big[::-1].copy()))
        assert ours() - before == {name}  # reused
        np.testing.assert_array_equal(again, big[::-1])
    finally:
        sender.close()
        receiver.close()
    assert ours() == before


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs: needs root")
def test_a_full_shm_directory_sends_in_band_and_leaves_nothing(
        tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/shm too small for an array: its segment fails at creation (never a SIGBUS later),
    nothing is left, the array goes in band, and later arrays that fit still get huge pages."""
    directory = str(tmp_path)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", directory], check=True)
    try:
        monkeypatch.setattr(_segments, "SHM_DIRECTORY", directory)
        a, b = secrets.token_hex(8), secrets.token_hex(8)
        sender, receiver = _segments.Segments(a, b), _segments.Segments(b, a)
        encoder, decoder = make_encoder(sender), make_decoder(np.ndarray)
        too_big = np.ones(2 * MIB)  # 16 MiB
        payload = encoder.encode(too_big)
        assert len(payload) > too_big.nbytes and not os.listdir(directory)  # in band
        np.testing.assert_array_equal(decoder.decode(payload), too_big)
        fits = np.ones(MIB // 2)  # 4 MiB
        kept = decoder.decode(encoder.encode(fits))
        (name,) = os.listdir(directory)
        with open(os.path.join(directory, name), "rb") as file:
            assert file.read(16)[8:] == _segments.HUGE or not HUGE_PAGES
        np.testing.assert_array_equal(kept, fits)
        del kept
        sender.close()
        receiver.close()
        assert not os.listdir(directory)
    finally:
        subprocess.run(["umount", directory], check=True)
