"""TLS for the RPC layer's TCP connections: a transport, a client connect and a listener.

The event loops' own TLS layer (asyncio's ``sslproto``, uvloop's port of it) hands a whole
write to OpenSSL, which encrypts all of it into a memory buffer before the first byte goes
to the socket; the bytes are copied out whole again, and the receiver then sits idle until
they arrive. Here OpenSSL still works on memory buffers (``ssl.SSLObject``), but in steps
of ``WRITE_CHUNK`` bytes, each sent before the next is encrypted, and the receiver reads
the socket in ``RAW_READ`` blocks and decrypts straight into the protocol's buffer. The
sender encrypts while the receiver decrypts, and nothing is copied whole: large messages
take less CPU and move faster (docs/decisions/0025-tls-transport.md has the measurements).

Everything runs on the event loop's thread, driven by its reader and writer callbacks
(``add_reader``/``add_writer``, which asyncio's selector loops and uvloop both have).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

RECORD = 16 * 1024
"""TLS's largest record payload: a shorter read means the peer's write ended there."""
WRITE_CHUNK = 256 * 1024
"""Plaintext bytes encrypted at a time; each chunk is sent before the next is encrypted."""
RAW_READ = 256 * 1024
"""Bytes asked of the socket per read."""
READ_BUDGET = 1024 * 1024
"""Bytes read per readiness event at most, so that one busy peer cannot starve the loop."""
HIGH_WATER = 512 * 1024
"""Unsent bytes above which the protocol is paused (``pause_writing``)."""
ACCEPT_RETRY = 1.0
"""Seconds a listener stops accepting after running out of file descriptors or memory."""
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class Tls:
    """A TLS session whose handshake is done: the socket and OpenSSL's side of it."""

    def __init__(self, sock: socket.socket, session: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self.sock, self.session, self.incoming, self.outgoing = sock, session, incoming, outgoing


class TlsTransport(asyncio.Transport):
    """An ``asyncio.Transport`` over a ``Tls`` session, for a ``BufferedProtocol``.

    ``write`` keeps a view of the bytes it is given until they are encrypted (no copy): the
    caller must not change them afterwards (the RPC connection never does; uvloop's own
    transports rely on the same). ``get_extra_info("ssl_object")`` is the ``ssl.SSLObject``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, tls: Tls,
                 protocol: asyncio.BufferedProtocol) -> None:
        session, sock = tls.session, tls.sock
        super().__init__({
            "socket": sock, "ssl_object": session, "sslcontext": session.context,
            "peername": _name(sock.getpeername), "sockname": _name(sock.getsockname),
            "peercert": session.getpeercert(), "cipher": session.cipher(),
            "compression": None,
        })
        self._loop = loop
        self._sock, self._session = sock, session
        self._incoming, self._outgoing = tls.incoming, tls.outgoing
        self._fd = sock.fileno()
        self._protocol = protocol
        self._raw = _raw_buffer()
        self._wire: memoryview | bytes | None = None  # Encrypted, not yet taken by the socket.
        self._pending: collections.deque[memoryview] = collections.deque()  # Plaintext.
        self._pending_size = 0
        self._high, self._low = HIGH_WATER, HIGH_WATER // 4
        self._protocol_paused = False
        self._reading = False
        self._held = False  # OpenSSL holds decrypted bytes the protocol has not had yet.
        self._watching_writable = False
        self._closing = False
        self._lost = False

    def start(self) -> None:
        """Tell the protocol it is connected, and start reading."""
        self._protocol.connection_made(self)
        self.resume_reading()

    # ------------------------------------------------------------------ reading

    def is_reading(self) -> bool:
        return self._reading

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
            if self._held or self._incoming.pending:  # Read, not yet delivered.
                self._loop.call_soon(self._on_readable)

    # The per-read hot path: one function on purpose (Python calls cost, per record).
    def _on_readable(self) -> None:
        """Read the socket, decrypt into the protocol's buffers, until the socket has no
        more (or ``READ_BUDGET`` bytes were read: the loop calls again). Records are
        decrypted into one buffer until it is full before the protocol hears of them."""
        session, protocol, incoming, raw = self._session, self._protocol, self._incoming, self._raw
        # With a buffer, read returns the count read into it (the stubs say bytes).
        read_into: Callable[[int, memoryview], int] = session.read  # type: ignore[assignment]
        budget = READ_BUDGET
        starving = False  # OpenSSL holds part of a record and needs the rest.
        held = self._held  # OpenSSL may hold decrypted bytes (the last buffer filled up).
        try:
            while self._reading:
                if starving or not (held or incoming.pending):
                    if budget <= 0:
                        return
                    try:
                        count = self._sock.recv_into(raw)
                    except (BlockingIOError, InterruptedError):
                        return
                    except OSError as error:
                        self._fail(error)
                        return
                    if count == 0:
                        self._end_of_file()
                        return
                    incoming.write(raw[:count])
                    budget -= count
                buffer: memoryview = protocol.get_buffer(-1)  # type: ignore[assignment]
                size = len(buffer)
                if not size:
                    raise RuntimeError("get_buffer() returned an empty buffer")
                filled, count, starving = 0, -1, False
                try:
                    count = filled = read_into(size, buffer)
                    # A shorter record than TLS's largest ends the peer's write: stop there.
                    while count and filled < size and (count == RECORD or incoming.pending):
                        count = read_into(size - filled, buffer[filled:])
                        filled += count
                except ssl.SSLWantReadError:
                    starving = True
                except OSError as error:  # ssl.SSLError included: a bad record, an alert.
                    self._fail(error)
                    return
                held = filled == size
                if filled:
                    protocol.buffer_updated(filled)
                if count == 0:  # The peer's close_notify.
                    self._end_of_file()
                    return
                if self._outgoing.pending and self._wire is None:
                    self._send_pending()  # OpenSSL answers something (a key update).
                if not (starving or held or incoming.pending) and count < RECORD:
                    return  # The loop says when more arrives.
            self._held = held  # Reading paused: resume_reading goes on from here.
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as error:  # The protocol failed: as asyncio's transports do.
            self._fail(error)

    def _end_of_file(self) -> None:
        if self._protocol.eof_received():
            logger.warning("eof_received() returning true has no effect over TLS")
        self.close()

    # ------------------------------------------------------------------ writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        if not self._pending and self._wire is None and len(data) <= WRITE_CHUNK:
            # The common case, small and nothing waiting: straight out (``_push`` inline).
            try:
                self._session.write(data)
            except OSError as error:
                self._fail(error)
                return
            wire = self._outgoing.read()
            try:
                sent = self._sock.send(wire)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as error:
                self._fail(error)
                return
            if sent < len(wire):
                self._wire = memoryview(wire)[sent:]
                self._watch_writable()
            return
        view = memoryview(data).cast("B")
        self._pending.append(view)
        self._pending_size += len(view)
        if not self._watching_writable:
            self._send_pending()
        if not self._protocol_paused and self._pending_size > self._high:
            self._protocol_paused = True
            self._protocol.pause_writing()

    def _push(self) -> bool:
        """Hand the encrypted bytes to the socket; False if it could not take them all
        (the rest waits in ``_wire`` until the socket is writable) or failed."""
        wire = self._wire
        if wire is None:
            wire = self._outgoing.read()
        try:
            sent = self._sock.send(wire)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self._fail(error)
            return False
        if sent == len(wire):
            self._wire = None
            return True
        self._wire = memoryview(wire)[sent:]
        self._watch_writable()
        return False

    def _send_pending(self) -> None:
        """Encrypt and send what is pending, a chunk at a time, until all is sent or the
        socket is full."""
        pending, outgoing = self._pending, self._outgoing
        while True:
            if (self._wire is not None or outgoing.pending) and not self._push():
                return
            if not pending:
                break
            view = pending[0]
            try:
                taken = self._session.write(view[:WRITE_CHUNK])
            except OSError as error:
                self._fail(error)
                return
            self._pending_size -= taken
            if taken == len(view):
                pending.popleft()
            else:
                pending[0] = view[taken:]
        self._unwatch_writable()
        if self._protocol_paused and self._pending_size <= self._low:
            self._protocol_paused = False
            self._protocol.resume_writing()
        if self._closing:
            self._finish(None, goodbye=True)

    def _watch_writable(self) -> None:
        if not self._watching_writable and not self._lost:
            self._watching_writable = True
            self._loop.add_writer(self._fd, self._send_pending)

    def _unwatch_writable(self) -> None:
        if self._watching_writable:
            self._watching_writable = False
            self._loop.remove_writer(self._fd)

    def get_write_buffer_size(self) -> int:
        wire = self._wire
        return self._pending_size + (0 if wire is None else len(wire))

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not 0 <= low <= high:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) >= 0")
        self._high, self._low = high, low

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close.

    def write_eof(self) -> None:
        raise NotImplementedError("TLS does not support half-closing")

    # ------------------------------------------------------------------ closing

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Stop reading; send what is pending, then close (with close_notify)."""
        if self._closing:
            return
        self._closing = True
        self.pause_reading()
        if not self._pending and self._wire is None:
            self._loop.call_soon(self._finish, None, True)

    def abort(self) -> None:
        """Close at once; what is pending is dropped."""
        self._drop(None)

    def _fail(self, error: BaseException) -> None:
        self._drop(error if isinstance(error, Exception) else RuntimeError(repr(error)))

    def _drop(self, error: Exception | None) -> None:
        self._closing = True
        self.pause_reading()
        self._pending.clear()
        self._pending_size = 0
        self._wire = None
        self._finish(error, goodbye=False)

    def _finish(self, error: Exception | None, goodbye: bool) -> None:
        """Close the socket (once) and tell the protocol, on the loop's next turn."""
        if self._lost:
            return
        self._lost = True
        self._unwatch_writable()
        if goodbye:  # close_notify, if the socket takes it now; the peer's is not awaited.
            with contextlib.suppress(OSError, ValueError):
                self._session.unwrap()
            with contextlib.suppress(OSError):
                if self._outgoing.pending:
                    self._sock.send(self._outgoing.read())
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, error)


_per_thread = threading.local()


def _raw_buffer() -> memoryview:
    """The socket read buffer of this thread's transports: one per thread, not one per
    connection, since a read's bytes go to OpenSSL before anything else can run here."""
    raw: memoryview | None = getattr(_per_thread, "raw", None)
    if raw is None:
        raw = _per_thread.raw = memoryview(bytearray(RAW_READ))
    return raw


def _name(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:
        return None


# ---------------------------------------------------------------------- connecting


async def handshake(sock: socket.socket, context: ssl.SSLContext, *, server_side: bool,
                    server_hostname: str | None, timeout: float) -> Tls:
    """The TLS handshake on the connected, non-blocking ``sock`` (taken over: closed on
    any failure), within ``timeout`` seconds (else ``TimeoutError``)."""
    loop = asyncio.get_running_loop()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    try:
        session = context.wrap_bio(incoming, outgoing, server_side=server_side,
                                   server_hostname=server_hostname)
        async with asyncio.timeout(timeout):
            while True:
                try:
                    session.do_handshake()
                    done = True
                except ssl.SSLWantReadError:
                    done = False
                if outgoing.pending:
                    await loop.sock_sendall(sock, outgoing.read())
                if done:
                    return Tls(sock, session, incoming, outgoing)
                data = await loop.sock_recv(sock, RAW_READ)
                if not data:
                    raise ConnectionResetError(
                        "the peer closed the connection during the TLS handshake")
                incoming.write(data)
    except TimeoutError:
        sock.close()
        raise TimeoutError(f"TLS handshake not done within {timeout} s") from None
    except BaseException:
        sock.close()
        raise


async def open_connection(host: str, port: int) -> socket.socket:
    """A non-blocking TCP socket connected to ``host``:``port`` (every address ``host``
    resolves to is tried in turn), with Nagle's algorithm off."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, address)
        except OSError as error:
            sock.close()
            errors.append(error)
            continue
        except BaseException:
            sock.close()
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    if len(errors) == 1:
        raise errors[0]
    raise OSError(f"could not connect to {host}:{port}: "
                  + "; ".join(str(error) for error in errors))


# ---------------------------------------------------------------------- the listener


class TlsListener:
    """Accepts TCP connections on a bound socket, does each one's TLS handshake (at most
    ``max_handshakes`` at once: beyond, the oldest is dropped) and hands the session to
    ``on_ready``. Has the parts of ``asyncio.Server`` the RPC ``Server`` uses:
    ``sockets``, ``is_serving``, ``close``, ``wait_closed``."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext,
                 on_ready: Callable[[Tls], None], *, timeout: float,
                 max_handshakes: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.sockets = [sock]
        self._sock = sock
        self._context = context
        self._on_ready = on_ready
        self._timeout = timeout
        self._max_handshakes = max_handshakes
        self._handshakes: dict[asyncio.Task[None], None] = {}  # Oldest first.
        self._serving = True
        sock.setblocking(False)
        sock.listen(socket.SOMAXCONN)
        self._loop.add_reader(sock.fileno(), self._accept)

    def is_serving(self) -> bool:
        return self._serving

    def _accept(self) -> None:
        for _ in range(64):  # A bounded batch per readiness event.
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as error:
                if error.errno in _OUT_OF_RESOURCES:  # Wait, rather than spin on it.
                    logger.warning("TLS listener: %s; not accepting for %s s", error,
                                   ACCEPT_RETRY)
                    self._loop.remove_reader(self._sock.fileno())
                    self._loop.call_later(ACCEPT_RETRY, self._resume_accepting)
                else:
                    logger.warning("TLS listener: accepting failed: %s", error)
                return
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = self._loop.create_task(self._handshake(conn))
            self._handshakes[task] = None
            task.add_done_callback(self._handshakes.pop)
            if len(self._handshakes) > self._max_handshakes:
                next(iter(self._handshakes)).cancel()

    def _resume_accepting(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _handshake(self, conn: socket.socket) -> None:
        try:
            tls = await handshake(conn, self._context, server_side=True,
                                  server_hostname=None, timeout=self._timeout)
        except (OSError, TimeoutError) as error:  # Refused, or gone: nothing to keep.
            logger.debug("TLS handshake with a client failed: %s", error)
            return
        if not self._serving:
            tls.sock.close()
            return
        self._on_ready(tls)

    def close(self) -> None:
        """Stop accepting; handshakes under way are abandoned (their sockets closed)."""
        if not self._serving:
            return
        self._serving = False
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        for task in self._handshakes:
            task.cancel()

    async def wait_closed(self) -> None:
        if self._handshakes:
            await asyncio.gather(*self._handshakes, return_exceptions=True)
