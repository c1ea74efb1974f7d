"""Hypothesis property tests: framing under arbitrary split points, and the typed codecs."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpc_parallel.rpc import frames

from . import layer as rpc
from .support import (
    SECRET,
    TIMEOUT,
    RawPeer,
    Service,
    encode,
    frame,
    implementations,
    tcp_address,
)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """One event loop (uvloop when installed) for all examples of a test."""
    with asyncio.Runner(loop_factory=rpc.new_event_loop) as runner:
        yield runner


# ---------------------------------------------------------------------- framing

# Payload sizes around the receive buffer (256 KiB) and the large-frame threshold (128 KiB).
PAYLOAD_SIZES = st.one_of(
    st.integers(0, 64),
    st.integers(0, 5000),
    st.sampled_from([128 * 1024 - 40, 128 * 1024 - 13, 128 * 1024 + 7, 256 * 1024 - 13,
                     256 * 1024 + 1, 700_000]),
)


def echo_stream(sizes: list[int], index: int) -> tuple[bytes, dict[int, bytes]]:
    """QUERY frames calling ``echo`` (odd call ids, as a client numbers them), with heartbeats
    and credits for unknown calls in between (ignored by the receiver)."""
    stream = bytearray()
    expected: dict[int, bytes] = {}
    for n, size in enumerate(sizes):
        call_id = 2 * n + 1
        data = bytes((call_id + i) % 251 for i in range(min(size, 251))) * (size // 251 + 1)
        data = data[:size]
        expected[call_id] = data
        stream += frame(frames.QUERY, call_id, index, encode((data,)))
        if n % 3 == 0:
            stream += frame(frames.HEARTBEAT)
        if n % 4 == 1:
            stream += frame(frames.CREDIT, 1001, 4096)
    return bytes(stream), expected


async def collect_responses(peer: RawPeer, expected: dict[int, bytes]) -> None:
    got: dict[int, bytes] = {}
    while len(got) < len(expected):
        received = await peer.read_frame()
        assert received is not None, "the connection closed"
        message_type, call_id, _, payload = received
        if message_type == frames.HEARTBEAT:
            continue
        assert message_type == frames.RESPONSE, (message_type, payload[:200])
        assert call_id not in got
        got[call_id] = msgspec.msgpack.decode(payload, type=bytes)
    assert got == expected


async def socketpair_connection(
    service: Service,
) -> tuple[rpc.Connection, RawPeer]:
    """A served Connection on one end of a real socketpair, a hand-written peer on the other."""
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    _, connection = await loop.connect_accepted_socket(
        lambda: rpc.Connection(secret=SECRET, implementations=implementations(service),
                               is_client=False),
        theirs,
    )
    reader, writer = await asyncio.open_connection(sock=ours)
    peer = RawPeer(reader, writer)
    await peer.handshake()
    await asyncio.wait_for(connection.wait_ready(), TIMEOUT)
    return connection, peer


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=st.lists(PAYLOAD_SIZES, min_size=1, max_size=10), data=st.data())
def test_framing_any_split_points_deliver_the_same_messages(
    sizes: list[int], data: st.DataObject
) -> None:
    """Bytes handed to the receive path in arbitrary pieces (exactly as a transport hands
    them: get_buffer, copy, buffer_updated) give the same calls as one piece."""

    async def check() -> None:
        connection, peer = await socketpair_connection(Service())
        stream, expected = echo_stream(sizes, peer.index_of("echo"))
        cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=40)))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        for piece in pieces:
            view = memoryview(piece)
            while view:
                buffer = connection.get_buffer(-1)
                n = min(len(buffer), len(view))
                assert n > 0
                buffer[:n] = view[:n]
                connection.buffer_updated(n)
                view = view[n:]
            await asyncio.sleep(0)  # let the served calls run between pieces
        await asyncio.wait_for(collect_responses(peer, expected), TIMEOUT)
        assert not connection.is_closed
        connection.close()
        peer.close()
        await asyncio.wait_for(connection.wait_closed(), TIMEOUT)

    rpc.run(check())


def test_framing_through_real_sockets_with_random_chunking(runner: asyncio.Runner) -> None:
    """The same through TCP: each piece written and drained on its own (TCP_NODELAY)."""
    service = Service()
    server = runner.run(
        rpc.serve_tcp(secret=SECRET, implementations=implementations(service))
    )

    @settings(max_examples=30, deadline=None)
    @given(sizes=st.lists(PAYLOAD_SIZES, min_size=1, max_size=8), data=st.data())
    def check(sizes: list[int], data: st.DataObject) -> None:
        async def run() -> None:
            peer = await RawPeer.open(server.address)
            sock = peer.writer.get_extra_info("socket")
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await peer.handshake()
            stream, expected = echo_stream(sizes, peer.index_of("echo"))
            cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
            for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                peer.send(stream[a:b])
                await peer.writer.drain()
                await asyncio.sleep(0)
            await asyncio.wait_for(collect_responses(peer, expected), TIMEOUT)
            peer.close()

        runner.run(run())

    try:
        check()
    finally:
        server.close()
        runner.run(server.wait_closed())


# ---------------------------------------------------------------------- codecs


class Point(msgspec.Struct):
    x: int
    y: float
    tags: list[str]


@dataclasses.dataclass
class Box:
    label: str
    size: int | None


points = st.builds(
    Point, x=st.integers(-(2**63), 2**64 - 1), y=st.floats(allow_nan=False),
    tags=st.lists(st.text()),
)
boxes = st.builds(Box, label=st.text(), size=st.none() | st.integers(-(2**63), 2**63 - 1))
ints = st.integers(-(2**63), 2**64 - 1)
floats = st.floats(allow_nan=False)

CASES: dict[str, tuple[Any, st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    # name: (type, values of the type, values of other types)
    "int": (int, ints, st.text() | floats | st.booleans() | st.none() | st.binary()),
    "float": (float, floats, st.text() | st.booleans() | st.none() | st.lists(floats)),
    "str": (str, st.text(), ints | st.binary() | st.none() | st.lists(st.text())),
    "bytes": (bytes, st.binary(), st.text() | ints | st.none()),
    "bytearray": (bytearray, st.binary().map(bytearray), st.text() | ints),
    "bool": (bool, st.booleans(), ints | st.text() | st.none()),
    "none": (None, st.none(), ints | st.text() | st.booleans()),
    "list_int": (list[int], st.lists(ints), st.lists(st.text(), min_size=1) | st.text() | ints),
    "dict_str_float": (
        dict[str, float], st.dictionaries(st.text(), floats),
        st.dictionaries(ints, floats, min_size=1) | st.dictionaries(st.text(), st.text(), min_size=1)
        | st.lists(floats) | st.text(),
    ),
    "tuple": (tuple[int, str, bytes], st.tuples(ints, st.text(), st.binary()),
              st.tuples(st.text(), st.text(), st.binary()) | st.tuples(ints) | ints),
    "optional": (int | None, st.none() | ints, st.text() | floats | st.lists(ints)),
    "set_int": (set[int], st.sets(ints), st.sets(st.text(), min_size=1) | ints),
    "struct": (Point, points, boxes | ints | st.text()),
    "dataclass": (Box, boxes, st.builds(lambda t: {"label": t}, ints) | ints | st.text()),
    "nested": (list[dict[str, Point]], st.lists(st.dictionaries(st.text(), points)),
               st.lists(st.dictionaries(st.text(), ints, min_size=1), min_size=1)),
}


def identity_specs() -> tuple[dict[str, rpc.FunctionSpec], list[rpc.Implementation], list[int]]:
    """An ``rpc`` of each type that returns its argument; ``calls`` counts how often any ran."""
    specs: dict[str, rpc.FunctionSpec] = {}
    served: list[rpc.Implementation] = []
    calls = [0]

    async def identity(value: Any) -> Any:
        calls[0] += 1
        return value

    for name, (annotation, _, _) in CASES.items():
        spec = rpc.FunctionSpec(
            f"identity_{name}", kind="rpc", parameters=[("value", annotation)],
            response=annotation,
        )
        specs[name] = spec
        served.append(rpc.Implementation(spec, identity))
    return specs, served, calls


@pytest.fixture
def identity_pair(
    runner: asyncio.Runner,
) -> Iterator[tuple[Callable[[Any], Any], dict[str, rpc.FunctionSpec], list[int]]]:
    specs, served, calls = identity_specs()
    server = runner.run(rpc.serve_tcp(secret=SECRET, implementations=served))
    client = runner.run(rpc.connect_tcp(*tcp_address(server), secret=SECRET))

    def call(spec_and_value: Any) -> Any:
        spec, value = spec_and_value
        return runner.run(asyncio.wait_for(client.call(spec, value), TIMEOUT))

    yield call, specs, calls
    client.close()
    server.close()
    runner.run(client.wait_closed())
    runner.run(server.wait_closed())


def normal(value: Any) -> Any:
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return value


@pytest.mark.parametrize("case", sorted(CASES))
def test_codec_values_round_trip(
    case: str,
    identity_pair: tuple[Callable[[Any], Any], dict[str, rpc.FunctionSpec], list[int]],
) -> None:
    call, specs, _ = identity_pair
    annotation, values, _ = CASES[case]

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(value=values)
    def check(value: Any) -> None:
        result = call((specs[case], value))
        assert normal(result) == normal(value)
        if annotation is not None and isinstance(annotation, type):
            assert isinstance(result, annotation)

    check()


@pytest.mark.parametrize("case", sorted(CASES))
def test_codec_wrong_types_are_refused_by_name(
    case: str,
    identity_pair: tuple[Callable[[Any], Any], dict[str, rpc.FunctionSpec], list[int]],
) -> None:
    call, specs, calls = identity_pair
    annotation, _, wrong = CASES[case]
    spec = specs[case]

    @settings(max_examples=30, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(value=wrong)
    def check(value: Any) -> None:
        before = calls[0]
        with pytest.raises(rpc.ProtocolError) as info:
            call((spec, value))
        message = str(info.value)
        assert spec.name in message
        assert "argument 'value'" in message, message
        assert f"expected {rpc.type_name(annotation)}" in message, message
        assert calls[0] == before, "the implementation ran with a wrong argument"

    check()


def test_memoryview_arguments_round_trip(runner: asyncio.Runner) -> None:
    """memoryview values decode to views that stay valid after the frame is gone."""
    kept: list[memoryview] = []

    async def keep(value: memoryview) -> int:
        kept.append(value)
        return len(value)

    spec = rpc.FunctionSpec("keep", kind="rpc", parameters=[("value", memoryview)], response=int)

    async def run() -> None:
        server = await rpc.serve_tcp(secret=SECRET, implementations=[rpc.Implementation(spec, keep)])
        async with server:
            client = await rpc.connect_tcp(*tcp_address(server), secret=SECRET)
            values = [bytes([i % 256]) * (i * 977) for i in range(40)]
            for value in values:
                assert await client.call(spec, memoryview(value)) == len(value)
            assert [bytes(v) for v in kept] == values
            client.close()
            await client.wait_closed()

    runner.run(run())


def test_results_and_items_of_the_wrong_type_are_refused(runner: asyncio.Runner) -> None:
    async def lies() -> int:
        return "not an int"  # type: ignore[return-value]

    async def lying_items() -> AsyncIterator[int]:
        yield 1
        yield "two"  # type: ignore[misc]

    rpc_spec = rpc.FunctionSpec("lies", kind="rpc", response=int)
    pipe_spec = rpc.FunctionSpec("lying_items", kind="pipe", item=int)

    async def run() -> None:
        server = await rpc.serve_tcp(
            secret=SECRET,
            implementations=[rpc.Implementation(rpc_spec, lies),
                             rpc.Implementation(pipe_spec, lying_items)],
        )
        async with server:
            client = await rpc.connect_tcp(*tcp_address(server), secret=SECRET)
            with pytest.raises(rpc.ProtocolError, match=r"lies: result: .*\(expected int\)"):
                await client.call(rpc_spec)
            reader = await client.pipe(pipe_spec)
            assert await anext(reader) == 1
            with pytest.raises(rpc.ProtocolError, match=r"lying_items: stream item: .*expected int"):
                await anext(reader)
            assert not client.is_closed
            client.close()
            await client.wait_closed()

    runner.run(run())


def test_unsupported_types_are_refused_at_send(runner: asyncio.Runner) -> None:
    class Opaque:
        pass

    spec = rpc.FunctionSpec("anything", kind="rpc", parameters=[("value", Any)], response=Any)

    async def identity(value: Any) -> Any:
        return value

    async def run() -> None:
        server = await rpc.serve_tcp(
            secret=SECRET, implementations=[rpc.Implementation(spec, identity)]
        )
        async with server:
            client = await rpc.connect_tcp(*tcp_address(server), secret=SECRET)
            with pytest.raises(rpc.ProtocolError, match="anything: the arguments cannot be sent"):
                await client.call(spec, Opaque())
            assert await client.call(spec, [1, "x"]) == [1, "x"]
            client.close()
            await client.wait_closed()

    runner.run(run())


class Unregistered:
    def __init__(self, value: int = 0) -> None:
        self.value = value


class Registered:
    def __init__(self, value: int) -> None:
        self.value = value


rpc.register_type(Registered, lambda r: r.value, Registered)


def test_unsendable_results_and_unknown_types_fail_the_call(runner: asyncio.Runner) -> None:
    """A result that cannot be encoded fails the call (never a hang); a type without a codec
    is refused on receipt (never a crash); a registered type round-trips."""

    async def unsendable() -> int:
        return Unregistered()  # type: ignore[return-value]

    async def take_unknown(value: Unregistered) -> int:
        return 0

    async def take_registered(value: Registered) -> Registered:
        return Registered(value.value + 1)

    specs = {
        "unsendable": rpc.FunctionSpec("unsendable", kind="rpc", response=int),
        "take_unknown": rpc.FunctionSpec(
            "take_unknown", kind="rpc", parameters=[("value", Unregistered)], response=int
        ),
        "take_registered": rpc.FunctionSpec(
            "take_registered", kind="rpc", parameters=[("value", Registered)],
            response=Registered,
        ),
    }
    functions: dict[str, Callable[..., Any]] = {"unsendable": unsendable, "take_unknown": take_unknown,
                 "take_registered": take_registered}
    # The caller's view of take_unknown: the same wire type, sent as an int.
    as_int = rpc.FunctionSpec(
        "take_unknown", kind="rpc", parameters=[("value", int)], response=int
    )

    async def run() -> None:
        server = await rpc.serve_tcp(
            secret=SECRET,
            implementations=[rpc.Implementation(specs[n], functions[n]) for n in specs],
        )
        async with server:
            client = await rpc.connect_tcp(*tcp_address(server), secret=SECRET)
            with pytest.raises(rpc.ProtocolError, match="unsendable: the result cannot be sent"):
                await asyncio.wait_for(client.call(specs["unsendable"]), TIMEOUT)
            with pytest.raises(rpc.ProtocolError, match="take_unknown: the arguments cannot be"):
                await client.call(specs["take_unknown"], Unregistered())
            # Bypass the menu check (the digests differ): send an int where the peer wants a
            # type it has no codec for.
            client._peer_index[as_int] = client._peer_positions[("take_unknown", 1)]
            with pytest.raises(rpc.ProtocolError, match="take_unknown: argument 'value'"):
                await asyncio.wait_for(client.call(as_int, 1), TIMEOUT)
            result = await client.call(specs["take_registered"], Registered(41))
            assert isinstance(result, Registered) and result.value == 42
            assert not client.is_closed
            client.close()
            await client.wait_closed()

    runner.run(run())
