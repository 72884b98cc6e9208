"""TLS material of the router's gRPC port: a development PKI, caller identities from
certificates, and gRPC credentials that follow certificate rotation.

- ``ensure_dev_pki(directory)`` creates (once) a development CA, the router's server
  certificate and one client certificate per ``DEV_IDENTITIES`` entry; it re-issues what
  expires within ``RENEW_BEFORE``. The dev CA is for development only: its key sits next
  to the certificates it signs.
- ``identity_of(cert)`` is the authenticated caller a certificate names: its first URI
  SAN (``spiffe://meridian.local/acme``), else its first DNS SAN, else its subject CN, in
  a configurable order.
- ``server_credentials(...)`` serves with ``grpc.dynamic_ssl_server_credentials``: before
  each new connection's handshake gRPC asks for the current configuration, and the files
  are read again when one of them changed (inode, size or mtime), so a rotated
  certificate, key or client CA applies to new connections without a restart. A broken
  new file keeps the last good configuration and is logged, by path.
- ``channel_credentials(...)`` is the client side (CLI, tests, client library).

Private keys are read only from files of mode 0600 or stricter (``check_private``) and
are never printed: ``repr``, logs and errors name files, never their contents. Problems
with the material are ``KeyRingError`` (a secret missing, malformed or unsafe).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from router.codec.keys import check_private, write_private
from router.errors import KeyRingError

log = logging.getLogger(__name__)

DEV_IDENTITIES = ("service", "acme", "sre")
SPIFFE_DOMAIN = "meridian.local"
SERVER_NAME = "meridian-router"
CA_CERT, CA_KEY = "ca.pem", "ca-key.pem"
SERVER_CERT, SERVER_KEY = "server.pem", "server-key.pem"
VALIDITY = timedelta(days=365)
RENEW_BEFORE = timedelta(days=7)
# Issued a little in the past, so a peer whose clock lags does not see "not yet valid".
_BACKDATE = timedelta(minutes=5)
IDENTITY_SOURCES = ("uri_san", "dns_san", "cn")


def _now() -> datetime:
    """The clock of certificate lifetimes (a seam for tests)."""
    return datetime.now(UTC)


def spiffe_id(name: str) -> str:
    return f"spiffe://{SPIFFE_DOMAIN}/{name}"


def identity_files(directory: Path, name: str) -> tuple[Path, Path]:
    """(certificate, private key) of the dev identity ``name`` under ``directory``."""
    return directory / f"{name}.pem", directory / f"{name}-key.pem"


# --- the development PKI ----------------------------------------------------------------


@dataclass(frozen=True)
class _Leaf:
    cert: Path
    key: Path
    common_name: str
    sans: tuple[x509.GeneralName, ...]
    usage: x509.ObjectIdentifier


def _dev_leaves(directory: Path) -> list[_Leaf]:
    server = _Leaf(
        directory / SERVER_CERT,
        directory / SERVER_KEY,
        SERVER_NAME,
        (x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))),
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    clients = [
        _Leaf(
            *identity_files(directory, name),
            name,
            (x509.UniformResourceIdentifier(spiffe_id(name)),),
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        for name in DEV_IDENTITIES
    ]
    return [server, *clients]


def ensure_dev_pki(directory: Path) -> list[Path]:
    """Create the development PKI under ``directory`` (mode 0700) where it is missing.

    Files: ``ca.pem``/``ca-key.pem`` (the development CA), ``server.pem``/
    ``server-key.pem`` (CN meridian-router; DNS:localhost, IP:127.0.0.1; serverAuth) and,
    per dev identity, ``<name>.pem``/``<name>-key.pem`` (CN <name>, URI SAN
    ``spiffe://meridian.local/<name>``; clientAuth). Keys are EC P-256, files of keys
    0600 and written atomically. Valid files are kept; a certificate that expires within
    seven days, does not match its key or (a leaf) was not issued by the current CA is
    issued again, and a new CA re-issues every leaf; each re-issue of an existing file
    is logged with its reason. Returns the paths written.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)  # mkdir's mode is filtered by the umask; an old dir may be wider
    now = _now()
    made: list[Path] = []
    ca_cert_path, ca_key_path = directory / CA_CERT, directory / CA_KEY
    ca = _usable(ca_cert_path, ca_key_path, now, issuer=None)
    new_ca = ca is None
    if ca is None:
        key = ec.generate_private_key(ec.SECP256R1())
        ca = (_ca_certificate(key, now), key)
        made += _write_pair(ca_cert_path, ca_key_path, *ca)
    ca_cert, ca_key = ca
    for leaf in _dev_leaves(directory):
        if new_ca and leaf.cert.exists():
            log.warning("development TLS: re-issuing %s: the CA is new", leaf.cert)
        if new_ca or _usable(leaf.cert, leaf.key, now, issuer=ca_cert) is None:
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _leaf_certificate(leaf, key.public_key(), ca_cert, ca_key, now)
            made += _write_pair(leaf.cert, leaf.key, cert, key)
    return made


def _usable(
    cert_path: Path, key_path: Path, now: datetime, *, issuer: x509.Certificate | None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The pair if it can stay; None (logged when files existed) if it must be issued."""
    if not cert_path.exists() and not key_path.exists():
        return None
    why = _why_reissue(cert_path, key_path, now, issuer)
    if isinstance(why, str):
        log.warning("development TLS: re-issuing %s: %s", cert_path, why)
        return None
    return why


def _why_reissue(
    cert_path: Path, key_path: Path, now: datetime, issuer: x509.Certificate | None
) -> str | tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not cert_path.exists() or not key_path.exists():
        missing = cert_path if not cert_path.exists() else key_path
        return f"{missing.name} is missing"
    check_private(key_path, what="TLS private key")  # a widened key file is refused, not reused
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return "the certificate or its key is not readable PEM"
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return f"{key_path.name} is not an EC key"
    if not _matches(cert, key):
        return f"{cert_path.name} does not match {key_path.name}"
    expires = cert.not_valid_after_utc
    if expires - now < RENEW_BEFORE:
        return f"it expires {expires:%Y-%m-%d %H:%M} UTC, within {RENEW_BEFORE.days} days"
    if issuer is not None:
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return "it was not issued by the current development CA"
    return cert, key


def _matches(cert: x509.Certificate, key: PrivateKeyTypes) -> bool:
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return bool(cert.public_key().public_bytes(*spki) == key.public_key().public_bytes(*spki))


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: Any, now: datetime, not_after: datetime
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _ca_certificate(key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Meridian (development only)"),
        x509.NameAttribute(NameOID.COMMON_NAME, "Meridian development CA"),
    ])  # fmt: skip
    usage = x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    return (
        _builder(name, name, key.public_key(), now, now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )


def _leaf_certificate(
    leaf: _Leaf,
    public_key: ec.EllipticCurvePublicKey,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    now: datetime,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, leaf.common_name)])
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    # Never outlive the CA that vouches for it.
    not_after = min(now + VALIDITY, ca_cert.not_valid_after_utc)
    return (
        _builder(subject, ca_cert.subject, public_key, now, not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([leaf.usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(leaf.sans)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> list[Path]:
    """Key first, then certificate: a reader between the two sees a mismatch (and keeps
    its last good pair), never a certificate whose key is not there yet."""
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_private(key_path, pem_key.decode("ascii"))
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"))
    cert_path.chmod(0o644)  # a certificate is public
    return [cert_path, key_path]


# --- identities ---------------------------------------------------------------------------


def identity_of(
    cert_der_or_pem: bytes, order: Sequence[str] = ("uri_san", "dns_san", "cn")
) -> str | None:
    """The identity a certificate names: for each source in ``order`` (``uri_san``,
    ``dns_san``, ``cn``), its first value; None if no source in ``order`` has one.

    Raises ValueError for an unknown source or bytes that are not an X.509 certificate
    (PEM or DER). The certificate is not verified here: pass only certificates the TLS
    handshake verified (``context.auth_context()["x509_pem_cert"][0]``).
    """
    unknown = [s for s in order if s not in IDENTITY_SOURCES]
    if unknown:
        raise ValueError(
            f"unknown identity source(s) {unknown}; each must be one of {list(IDENTITY_SOURCES)}"
        )
    cert = _parse_certificate(cert_der_or_pem)
    for source in order:
        found = _first(cert, source)
        if found:
            return found
    return None


def _parse_certificate(data: bytes) -> x509.Certificate:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise ValueError("not an X.509 certificate (PEM or DER)") from None


def _first(cert: x509.Certificate, source: str) -> str | None:
    if source == "cn":
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        values = [n.value for n in names if isinstance(n.value, str)]
    else:
        kind = x509.UniformResourceIdentifier if source == "uri_san" else x509.DNSName
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return None
        values = san.get_values_for_type(kind)
    return next((v for v in values if v), None)


# --- gRPC credentials ---------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyRingError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise KeyRingError(f"{what} {path}: cannot read it ({exc.strerror})") from None


def _certificates(path: Path, what: str) -> bytes:
    """The file's bytes, once they parse as one or more PEM certificates."""
    data = _read(path, what)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise KeyRingError(f"{what} {path}: not PEM certificates") from None
    return data


def _key_and_chain(cert_file: Path, key_file: Path) -> tuple[bytes, bytes]:
    """(private key PEM, certificate chain PEM), checked: key file private, both parse,
    the key is the first certificate's."""
    check_private(key_file, what="TLS private key")
    chain = _certificates(cert_file, "TLS certificate")
    key_pem = _read(key_file, "TLS private key")
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyRingError(
            f"TLS private key {key_file}: not an unencrypted PEM private key"
        ) from None
    if not _matches(x509.load_pem_x509_certificates(chain)[0], key):
        raise KeyRingError(f"TLS private key {key_file} is not the key of {cert_file}")
    return key_pem, chain


# Per file (None: missing): inode, size, mode and the modification and change times;
# a rename, a write and a chmod each change it.
_Stamp = tuple[tuple[int, ...] | None, ...]


class _ServerFiles:
    """The certificate fetcher gRPC calls before every handshake: returns a new
    configuration when a file changed and loads, None otherwise (keep the current one)."""

    def __init__(self, cert_file: Path, key_file: Path, client_ca_file: Path | None) -> None:
        self.paths = (cert_file, key_file, client_ca_file)
        self._lock = threading.Lock()  # gRPC calls the fetcher from its own threads
        self._loaded: _Stamp = ()
        self._rejected: _Stamp = ()

    def __repr__(self) -> str:
        cert, key, ca = self.paths
        return f"ServerTLSFiles(cert={str(cert)!r}, key={str(key)!r}, client_ca={str(ca)!r})"

    def _stamp(self) -> _Stamp:
        out: list[tuple[int, ...] | None] = []
        for path in self.paths:
            try:
                st = None if path is None else os.stat(path)
            except OSError:
                st = None
            out.append(
                None
                if st is None
                else (st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
            )
        return tuple(out)

    def load(self) -> Any:
        """Read and check the files now (KeyRingError naming the file if one is bad)."""
        cert_file, key_file, ca_file = self.paths
        stamp = self._stamp()
        key_pem, chain = _key_and_chain(cert_file, key_file)
        roots = None if ca_file is None else _certificates(ca_file, "client CA")
        config = grpc.ssl_server_certificate_configuration([(key_pem, chain)], roots)
        self._loaded = stamp
        return config

    def fetch(self) -> Any:
        try:
            with self._lock:
                stamp = self._stamp()
                if stamp in (self._loaded, self._rejected):
                    return None
                try:
                    config = self.load()
                except KeyRingError as exc:
                    self._rejected = stamp
                    log.error("TLS files not reloaded, keeping the last good ones: %s", exc)
                    return None
                self._rejected = ()
                log.info("TLS: reloaded %s for new connections", self)
                return config
        except Exception as exc:  # nothing may escape into gRPC's handshake
            log.error("TLS reload failed (%s), keeping the last good files", type(exc).__name__)
            return None


def server_credentials(
    cert_file: Path,
    key_file: Path,
    client_ca_file: Path | None,
    *,
    require_client_cert: bool,
) -> grpc.ServerCredentials:
    """Server credentials that follow the files: each new connection's handshake uses
    the files as they are now, when they changed and load (a bad change is logged and
    the last good configuration kept). With ``require_client_cert`` every client must
    present a certificate issued by ``client_ca_file``.

    Note: gRPC's Python API asks for a client certificate only when it is required;
    without ``require_client_cert`` no client certificate is requested at all.
    Raises KeyRingError (naming the file) if the files do not load now.
    """
    if require_client_cert and client_ca_file is None:
        raise ValueError("require_client_cert needs client_ca_file: the CA clients must use")
    files = _ServerFiles(cert_file, key_file, client_ca_file)
    initial = files.load()
    return grpc.dynamic_ssl_server_credentials(
        initial, files.fetch, require_client_authentication=require_client_cert
    )


def channel_credentials(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> grpc.ChannelCredentials:
    """TLS for a client: trust ``ca_file`` (None: the system's CAs) and present
    ``cert_file`` with ``key_file`` (both or neither). KeyRingError names a bad file."""
    if (cert_file is None) != (key_file is None):
        raise KeyRingError("a client certificate and its private key go together: give both")
    roots = None if ca_file is None else _certificates(ca_file, "CA certificate")
    key_pem, chain = (None, None)
    if cert_file is not None and key_file is not None:
        key_pem, chain = _key_and_chain(cert_file, key_file)
    return grpc.ssl_channel_credentials(
        root_certificates=roots, private_key=key_pem, certificate_chain=chain
    )
