"""TLS for connections that leave the machine, with keys made for one application only.

An application has one :class:`TlsIdentity`: a self-signed certificate and its private key,
generated in memory by the master (lazily, when the first remote worker needs it) and handed
to its workers over the launch channel (ssh's standard input, never a command line or a
file). Every process presents that certificate and trusts nothing else: not the system's
CA store, not a host name. TLS 1.3 only; both sides require the peer's certificate. The
RPC handshake's HMAC proof of the secret still runs inside the TLS session.

``cryptography`` is imported only by :meth:`TlsIdentity.generate`; loading an identity
into an :class:`ssl.SSLContext` needs the standard library alone. See
docs/decisions/0011-tls.md. The contexts are used by the RPC layer's own TLS transport
(``_tls_transport``, docs/decisions/0025-tls-transport.md), not the event loop's.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import ssl
from collections.abc import Iterator

import msgspec

COMMON_NAME = "rpc_parallel application"
"""Prefix of the certificate's subject (a random suffix tells applications apart)."""
VALIDITY = datetime.timedelta(days=3650)
"""The certificate outlives any master; it is never stored, so it never needs renewing."""
CLOCK_SKEW = datetime.timedelta(hours=1)
"""The certificate is valid from this long before its creation (hosts' clocks differ)."""

_USE_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


class TlsIdentity(msgspec.Struct, frozen=True):
    """The application's certificate and private key, both PEM; sent to workers on the wire.

    Every process of the application presents this certificate and accepts a peer only if
    it presents the same one (so a peer proves it holds the key). ``repr`` never shows the
    key.
    """

    certificate: bytes
    key: bytes

    def __post_init__(self) -> None:
        if not self.certificate.lstrip().startswith(b"-----BEGIN CERTIFICATE-----"):
            raise ValueError("TlsIdentity.certificate is not a PEM certificate")
        if b"PRIVATE KEY-----" not in self.key:
            raise ValueError("TlsIdentity.key is not a PEM private key")

    @classmethod
    def generate(cls) -> TlsIdentity:
        """A new identity: an ECDSA P-256 key and a self-signed certificate for it."""
        certificate, key = _generate()
        return cls(certificate, key)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate (DER), in hex: safe to log, names the application."""
        der = ssl.PEM_cert_to_DER_cert(self.certificate.decode("ascii"))
        return hashlib.sha256(der).hexdigest()

    def __repr__(self) -> str:
        return f"TlsIdentity(fingerprint={self.fingerprint[:16]}...)"


def server_context(identity: TlsIdentity) -> ssl.SSLContext:
    """A context for ``serve_tcp(ssl=...)``: TLS 1.3, client certificate required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.num_tickets = 0  # clients never resume a session: send no tickets
    _configure(context, identity)
    return context


def client_context(identity: TlsIdentity) -> ssl.SSLContext:
    """A context for ``connect_tcp(ssl=...)``: TLS 1.3, the server must present the identity.

    Host names are not checked: the trust anchor is the application's own certificate, which
    only this application's processes hold, whatever address they listen on.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    _configure(context, identity)
    return context


def _configure(context: ssl.SSLContext, identity: TlsIdentity) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=identity.certificate.decode("ascii"))
        with _private_file(identity.certificate + b"\n" + identity.key) as path:
            context.load_cert_chain(path)
    except (ssl.SSLError, UnicodeDecodeError) as error:
        raise ValueError(f"TlsIdentity does not load (certificate and key must match): "
                         f"{error}") from None


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path from which ``data`` can be read, for as long as the block runs.

    ``SSLContext.load_cert_chain`` takes only paths. On Linux the path names an anonymous
    memory file (``memfd``), so the key never touches a disk; elsewhere it is a 0600 file in
    a 0700 directory, removed when the block ends.
    """
    if _USE_MEMFD:
        fd = os.memfd_create("rpc_parallel-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    import shutil  # (here only: every worker process imports this module)
    import tempfile

    directory = tempfile.mkdtemp(prefix="rp-tls-")  # mode 0700
    try:
        path = os.path.join(directory, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _generate() -> tuple[bytes, bytes]:
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError:
        raise RuntimeError(
            "generating TLS keys needs the 'cryptography' package (pip install cryptography)"
        ) from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME,
                                         f"{COMMON_NAME} {os.urandom(8).hex()}")])
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()),
    )
