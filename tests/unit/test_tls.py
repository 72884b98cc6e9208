"""router.tls: the development PKI on disk, identities from certificates, and real
grpc.aio TLS servers (mutual TLS, refused clients, certificate rotation without a
restart) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from router import tls
from router.config import load
from router.devstack import DevStack
from router.errors import KeyRingError
from tests.helpers import free_port

KEYS = ["ca-key.pem", "server-key.pem", *(f"{n}-key.pem" for n in tls.DEV_IDENTITIES)]
CERTS = ["ca.pem", "server.pem", *(f"{n}.pem" for n in tls.DEV_IDENTITIES)]


def cert_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(cert: x509.Certificate) -> list[Any]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    directory = tmp_path / "tls"
    tls.ensure_dev_pki(directory)
    return directory


# --- the development PKI ----------------------------------------------------------------


def test_dev_pki_files_modes_and_names(tmp_path: Path) -> None:
    directory = tmp_path / "home" / "tls"
    made = tls.ensure_dev_pki(directory)
    assert sorted(p.name for p in made) == sorted(KEYS + CERTS)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in KEYS:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600, name
    for name in CERTS:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o644, name
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "no temp files left"

    ca = cert_of(directory / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = cert_of(directory / "server.pem")
    server.verify_directly_issued_by(ca)
    assert server.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "meridian-router"
    assert sans(server) == [x509.DNSName("localhost"), x509.IPAddress(IPv4Address("127.0.0.1"))]
    assert eku(server) == [ExtendedKeyUsageOID.SERVER_AUTH]
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert timedelta(days=365) <= lifetime <= timedelta(days=366)
    for name in tls.DEV_IDENTITIES:
        cert = cert_of(directory / f"{name}.pem")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
        assert sans(cert) == [x509.UniformResourceIdentifier(f"spiffe://meridian.local/{name}")]
        assert eku(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        key = serialization.load_pem_private_key((directory / f"{name}-key.pem").read_bytes(), None)
        assert key.public_key() == cert.public_key()


def test_dev_pki_is_idempotent_and_replaces_only_what_is_missing(pki: Path) -> None:
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    assert tls.ensure_dev_pki(pki) == []
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before
    (pki / "acme-key.pem").unlink()
    assert tls.ensure_dev_pki(pki) == [pki / "acme.pem", pki / "acme-key.pem"]
    after = {p.name: p.read_bytes() for p in pki.iterdir()}
    assert [n for n in sorted(after) if after[n] != before[n]] == ["acme-key.pem", "acme.pem"]
    cert_of(pki / "acme.pem").verify_directly_issued_by(cert_of(pki / "ca.pem"))


def test_certificates_expiring_within_seven_days_are_reissued(
    pki: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    expires = cert_of(pki / "server.pem").not_valid_after_utc
    monkeypatch.setattr(tls, "_now", lambda: expires - timedelta(days=8))
    assert tls.ensure_dev_pki(pki) == [], "8 days left: kept"
    monkeypatch.setattr(tls, "_now", lambda: expires - timedelta(days=6))
    with caplog.at_level(logging.WARNING, logger="router.tls"):
        made = tls.ensure_dev_pki(pki)
    assert sorted(p.name for p in made) == sorted(KEYS + CERTS), "the CA too, so every leaf"
    assert f"re-issuing {pki / 'ca.pem'}: it expires" in caplog.text
    assert "within 7 days" in caplog.text
    assert cert_of(pki / "ca.pem").not_valid_after_utc > expires + timedelta(days=300)


def test_a_new_ca_reissues_every_leaf(pki: Path, caplog: pytest.LogCaptureFixture) -> None:
    (pki / "ca-key.pem").unlink()
    with caplog.at_level(logging.WARNING, logger="router.tls"):
        made = tls.ensure_dev_pki(pki)
    assert f"re-issuing {pki / 'ca.pem'}: ca-key.pem is missing" in caplog.text
    assert f"re-issuing {pki / 'sre.pem'}: the CA is new" in caplog.text
    assert sorted(p.name for p in made) == sorted(KEYS + CERTS)
    ca = cert_of(pki / "ca.pem")
    for name in ["server", *tls.DEV_IDENTITIES]:
        cert_of(pki / f"{name}.pem").verify_directly_issued_by(ca)


def test_a_leaf_of_another_ca_is_reissued(tmp_path: Path, pki: Path) -> None:
    other = tmp_path / "other"
    tls.ensure_dev_pki(other)
    for name in ("sre.pem", "sre-key.pem"):
        (pki / name).write_bytes((other / name).read_bytes())
    assert tls.ensure_dev_pki(pki) == [pki / "sre.pem", pki / "sre-key.pem"]
    cert_of(pki / "sre.pem").verify_directly_issued_by(cert_of(pki / "ca.pem"))


def test_a_widened_key_file_is_refused_with_the_fix(pki: Path) -> None:
    (pki / "ca-key.pem").chmod(0o644)
    with pytest.raises(KeyRingError, match=r"chmod 600 .*ca-key\.pem"):
        tls.ensure_dev_pki(pki)


def test_devstack_creates_the_dev_pki_and_says_where(tmp_path: Path) -> None:
    lines: list[str] = []
    stack = DevStack(
        load(), tmp_path / "c.yaml", home=tmp_path, keys_dir=tmp_path / "keys", say=lines.append
    )
    stack.ensure_secrets()
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == sorted(KEYS + CERTS)
    assert lines[-1].startswith(f"generated development TLS material in {tmp_path / 'tls'}")
    stack.ensure_secrets()
    assert lines[-1].startswith(f"using development TLS material in {tmp_path / 'tls'}")


# --- identities ---------------------------------------------------------------------------


def make_cert(cn: str | None, san: Sequence[x509.GeneralName]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
    return builder.sign(key, hashes.SHA256())


URI = x509.UniformResourceIdentifier
DNS = x509.DNSName
ALL = [URI("spiffe://meridian.local/acme"), DNS("acme.internal"), DNS("b.internal")]
DEFAULT = ("uri_san", "dns_san", "cn")
SPIFFE = "spiffe://meridian.local/acme"


@pytest.mark.parametrize(
    ("cn", "san", "order", "expected"),
    [
        pytest.param("acme-cn", ALL, DEFAULT, SPIFFE, id="uri-first"),
        pytest.param("acme-cn", ALL, ("dns_san", "uri_san", "cn"), "acme.internal", id="dns"),
        pytest.param("acme-cn", ALL, ("cn", "uri_san"), "acme-cn", id="cn-first"),
        pytest.param("cn", [DNS("acme.internal")], DEFAULT, "acme.internal", id="no-uri-dns"),
        pytest.param("acme-cn", [], DEFAULT, "acme-cn", id="no-san-cn"),
        pytest.param("acme-cn", [DNS("acme.internal")], ("uri_san",), None, id="uri-only"),
        pytest.param(None, [], DEFAULT, None, id="nothing"),
        pytest.param(
            None,
            [URI("spiffe://a/1"), URI("spiffe://a/2")],
            DEFAULT,
            "spiffe://a/1",
            id="first-of-two",
        ),
    ],
)
def test_identity_of(
    cn: str | None, san: list[x509.GeneralName], order: tuple[str, ...], expected: str | None
) -> None:
    cert = make_cert(cn, san)
    for encoding in (serialization.Encoding.PEM, serialization.Encoding.DER):
        assert tls.identity_of(cert.public_bytes(encoding), order) == expected


def test_identity_of_default_order_and_dev_identities(pki: Path) -> None:
    assert tls.identity_of((pki / "acme.pem").read_bytes()) == "spiffe://meridian.local/acme"
    assert tls.identity_of((pki / "server.pem").read_bytes()) == "localhost"


def test_identity_of_rejects_unknown_sources_and_garbage() -> None:
    pem = make_cert("x", []).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(ValueError, match="unknown identity source"):
        tls.identity_of(pem, ("uri_san", "email"))
    with pytest.raises(ValueError, match=r"not an X\.509 certificate"):
        tls.identity_of(b"not a certificate")


# --- client credentials -------------------------------------------------------------------


def test_channel_credentials_check_the_files(pki: Path) -> None:
    assert tls.channel_credentials(pki / "ca.pem", pki / "sre.pem", pki / "sre-key.pem")
    assert tls.channel_credentials(None, None, None), "system CAs, no client certificate"
    with pytest.raises(KeyRingError, match="give both"):
        tls.channel_credentials(pki / "ca.pem", pki / "sre.pem", None)
    with pytest.raises(KeyRingError, match=r"acme-key\.pem is not the key of .*sre\.pem"):
        tls.channel_credentials(pki / "ca.pem", pki / "sre.pem", pki / "acme-key.pem")
    with pytest.raises(KeyRingError, match=r"missing\.pem does not exist"):
        tls.channel_credentials(pki / "missing.pem", None, None)
    (pki / "sre-key.pem").chmod(0o640)
    with pytest.raises(KeyRingError, match=r"chmod 600 .*sre-key\.pem"):
        tls.channel_credentials(pki / "ca.pem", pki / "sre.pem", pki / "sre-key.pem")


# --- a real TLS server --------------------------------------------------------------------


@dataclass
class Health(health_aio.HealthServicer):  # type: ignore[misc]
    """The standard health service, recording each caller's auth context."""

    peers: list[dict[str, list[bytes]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__()

    async def Check(self, request: Any, context: Any) -> Any:
        self.peers.append(dict(context.auth_context()))
        return await super().Check(request, context)


@dataclass
class Served:
    address: str
    port: int
    health: Health


@contextlib.asynccontextmanager
async def serving(pki: Path, *, require_client_cert: bool = True) -> AsyncIterator[Served]:
    server = grpc.aio.server()
    health = Health()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    creds = tls.server_credentials(
        pki / "server.pem",
        pki / "server-key.pem",
        pki / "ca.pem",
        require_client_cert=require_client_cert,
    )
    port = free_port()
    assert server.add_secure_port(f"127.0.0.1:{port}", creds) == port
    await server.start()
    try:
        yield Served(f"127.0.0.1:{port}", port, health)
    finally:
        await server.stop(None)


async def check(address: str, creds: Any) -> Any:
    # A subchannel pool of its own: every call here is a new connection (a handshake).
    options = [("grpc.use_local_subchannel_pool", 1)]
    async with grpc.aio.secure_channel(address, creds, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)


def server_cert_seen(port: int, ca: Path, cert: Path, key: Path) -> x509.Certificate:
    """The certificate the server presents to a new TLS connection (Python's ssl)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


async def test_mutual_tls_names_the_caller_and_refuses_others(tmp_path: Path, pki: Path) -> None:
    acme = tls.channel_credentials(pki / "ca.pem", pki / "acme.pem", pki / "acme-key.pem")
    no_cert = tls.channel_credentials(pki / "ca.pem", None, None)
    other = tmp_path / "other"
    tls.ensure_dev_pki(other)
    foreign = tls.channel_credentials(pki / "ca.pem", other / "acme.pem", other / "acme-key.pem")
    async with serving(pki) as served:
        resp = await check(served.address, acme)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        (peer,) = served.health.peers
        assert tls.identity_of(peer["x509_pem_cert"][0]) == "spiffe://meridian.local/acme"
        for refused in (no_cert, foreign):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await check(served.address, refused)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len(served.health.peers) == 1, "no refused client reached the service"


async def test_without_required_client_certs_grpc_does_not_ask_for_one(pki: Path) -> None:
    acme = tls.channel_credentials(pki / "ca.pem", pki / "acme.pem", pki / "acme-key.pem")
    async with serving(pki, require_client_cert=False) as served:
        await check(served.address, tls.channel_credentials(pki / "ca.pem", None, None))
        await check(served.address, acme)
        assert all("x509_pem_cert" not in p for p in served.health.peers)


def test_server_credentials_refuse_bad_files_at_start(pki: Path) -> None:
    with pytest.raises(ValueError, match="needs client_ca_file"):
        tls.server_credentials(
            pki / "server.pem", pki / "server-key.pem", None, require_client_cert=True
        )
    (pki / "server-key.pem").chmod(0o644)
    with pytest.raises(KeyRingError, match=r"chmod 600 .*server-key\.pem"):
        tls.server_credentials(
            pki / "server.pem", pki / "server-key.pem", pki / "ca.pem", require_client_cert=True
        )


def replace(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


async def test_rotated_server_certificate_serves_new_connections_without_restart(
    pki: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sre = tls.channel_credentials(pki / "ca.pem", pki / "sre.pem", pki / "sre-key.pem")
    client = (pki / "ca.pem", pki / "sre.pem", pki / "sre-key.pem")
    async with serving(pki) as served:
        first = await asyncio.to_thread(server_cert_seen, served.port, *client)
        assert first == cert_of(pki / "server.pem")

        # Rotate: the pair is issued again (a new key, a new serial) by the same CA.
        (pki / "server.pem").unlink()
        (pki / "server-key.pem").unlink()
        assert tls.ensure_dev_pki(pki) == [pki / "server.pem", pki / "server-key.pem"]
        rotated = cert_of(pki / "server.pem")
        assert rotated.serial_number != first.serial_number
        seen = await asyncio.to_thread(server_cert_seen, served.port, *client)
        assert seen.serial_number == rotated.serial_number
        await check(served.address, sre)

        # A broken rotation: the last good pair keeps serving; the log names the file.
        secret_looking = b"-----BEGIN CERTIFICATE-----\nnot-a-certificate\n"
        replace(pki / "server.pem", secret_looking, 0o644)
        with caplog.at_level(logging.ERROR, logger="router.tls"):
            seen = await asyncio.to_thread(server_cert_seen, served.port, *client)
            await check(served.address, sre)
        assert seen.serial_number == rotated.serial_number
        assert f"TLS certificate {pki / 'server.pem'}: not PEM certificates" in caplog.text
        assert "not-a-certificate" not in caplog.text
        assert caplog.text.count("keeping the last good ones") == 1, "logged once per change"

        # A key file that others may read is refused the same way.
        good_key = (pki / "server-key.pem").read_bytes()
        replace(pki / "server.pem", rotated.public_bytes(serialization.Encoding.PEM), 0o644)
        replace(pki / "server-key.pem", good_key, 0o644)
        with caplog.at_level(logging.ERROR, logger="router.tls"):
            await check(served.address, sre)
        assert f"Fix: chmod 600 {pki / 'server-key.pem'}" in caplog.text
        assert good_key.decode() not in caplog.text

        # Fixed with chmod alone: the files load again.
        (pki / "server-key.pem").chmod(0o600)
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="router.tls"):
            await check(served.address, sre)
        assert "TLS: reloaded ServerTLSFiles(cert=" in caplog.text
