"""TLS to Temporal without a server: the ``tls`` config section (dotted-path errors, a
resolved form of paths only), reading the material (0600 keys, clear errors), the pool
(reconnect on a change of settings or of a file's contents, a cluster with unusable
material unavailable while the others are served), the translation of temporalio's
connect failures (texts measured against nginx and the dev server), and that no repr,
error or log line shows an API key or a private key."""

from __future__ import annotations

import logging
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from regions.worker import WorkerPlan
from router.config import ResolvedConfig, compile_config
from router.config.settings import ClusterTLS
from router.core.model import (
    ClusterView,
    DataClass,
    Priority,
    Refusal,
    RefusalKind,
    RouteRequest,
)
from router.core.policy import route
from router.errors import ClusterUnavailable, ConfigError, KeyRingError
from router.temporal import tls
from router.temporal.errors import connect_failure, translate
from router.temporal.health import HealthMonitor, _short
from router.temporal.pool import ClientPool
from tests.helpers import default_doc
from tests.tls_certs import Pki, make_pki

WHERE = "regions.eu-west.clusters[0].tls"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def doc_with_tls(section: dict[str, Any]) -> dict[str, Any]:
    doc = default_doc()
    doc["regions"]["eu-west"]["clusters"][0]["tls"] = section
    return doc


def errors_of(doc: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        compile_config(doc, source="test")
    return {e.path: e.message for e in info.value.errors}


# -- config ---------------------------------------------------------------------------


def test_tls_section_resolves_to_paths_and_names_only() -> None:
    section = {
        "ca_file": "/etc/meridian/eu/ca.pem",
        "cert_file": "/etc/meridian/eu/client.pem",
        "key_file": "/etc/meridian/eu/client.key",
        "server_name": "temporal.eu-west.example.com",
        "api_key_env": "MERIDIAN_EU_API_KEY",
    }
    config = compile_config(doc_with_tls(section), source="test")
    assert dict(config.cluster_tls) == {
        "eu-west-a": ClusterTLS(
            where=WHERE,
            ca_file=Path("/etc/meridian/eu/ca.pem"),
            cert_file=Path("/etc/meridian/eu/client.pem"),
            key_file=Path("/etc/meridian/eu/client.key"),
            server_name="temporal.eu-west.example.com",
            api_key_env="MERIDIAN_EU_API_KEY",
        )
    }
    # The pure core's cluster is untouched; the version follows the section.
    plain = compile_config(default_doc(), source="test")
    assert config.table.clusters["eu-west-a"] == plain.table.clusters["eu-west-a"]
    assert config.version != plain.version
    assert not plain.cluster_tls
    # An empty section: TLS with the system's roots.
    empty = compile_config(doc_with_tls({}), source="test")
    assert empty.cluster_tls["eu-west-a"] == ClusterTLS(where=WHERE)


@pytest.mark.parametrize(
    ("section", "key", "fragment"),
    [
        ({"cert_file": "/c.pem"}, "key_file", "required with cert_file"),
        ({"key_file": "/c.key"}, "cert_file", "required with key_file"),
        ({"api_key_file": "/k", "api_key_env": "K"}, "api_key_env", "not both"),
        ({"ca_file": "certs/ca.pem"}, "ca_file", "not an absolute file path"),
        ({"api_key_env": "1-BAD"}, "api_key_env", "not an environment variable name"),
        ({"server_name": "two words"}, "server_name", "not a host name"),
        ({"ca": "/ca.pem"}, "ca", "unknown key"),
        ({"api_key": "the-key-itself"}, "api_key", "unknown key"),
    ],
    ids=[
        "cert-without-key", "key-without-cert", "two-api-key-sources", "relative-path",
        "bad-env-name", "bad-server-name", "unknown-key", "inline-api-key",
    ],
)  # fmt: skip
def test_tls_errors_name_their_dotted_path(
    section: dict[str, Any], key: str, fragment: str
) -> None:
    errors = errors_of(doc_with_tls(section))
    assert fragment in errors[f"{WHERE}.{key}"], errors
    assert "the-key-itself" not in str(errors)


# -- reading the material -----------------------------------------------------------------


def settings(pki: Pki, **changes: Any) -> ClusterTLS:
    base: dict[str, Any] = {
        "ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key,
    }  # fmt: skip
    base.update(changes)
    return ClusterTLS(where=WHERE, **base)


def test_load_reads_every_file(pki: Pki, tmp_path: Path) -> None:
    key_file = tmp_path / "api.key"
    key_file.write_text("api-key-from-file\n")
    key_file.chmod(0o600)
    creds = tls.load(settings(pki, server_name="localhost", api_key_file=key_file))
    assert creds.server_root_ca_cert == pki.ca.read_bytes()
    assert creds.client_cert == pki.client_cert.read_bytes()
    assert creds.client_private_key == pki.client_key.read_bytes()
    assert creds.api_key == "api-key-from-file"
    config = creds.tls_config()
    assert (config.server_root_ca_cert, config.domain) == (pki.ca.read_bytes(), "localhost")
    from_env = tls.load(
        ClusterTLS(where=WHERE, api_key_env="EU_KEY"), environ={"EU_KEY": "api-key-from-env"}
    )
    assert from_env.api_key == "api-key-from-env"
    assert from_env.server_root_ca_cert is None  # the system's roots


def test_private_files_must_be_0600(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "client.key"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0o644)
    with pytest.raises(KeyRingError) as info:
        tls.load(settings(pki, key_file=key))
    assert info.value.message == (
        f"{WHERE}.key_file {key} is accessible by group/other (mode 0644); refusing to use "
        f"it. Fix: chmod 600 {key}"
    )
    api = tmp_path / "api.key"
    api.write_text("secret-api-key\n")
    api.chmod(0o640)
    with pytest.raises(KeyRingError) as info:
        tls.load(ClusterTLS(where=WHERE, api_key_file=api))
    assert info.value.message.startswith(f"{WHERE}.api_key_file {api} is accessible")
    assert info.value.message.endswith(f"Fix: chmod 600 {api}")


@pytest.mark.parametrize("which", ["missing", "not-pem", "env-unset", "api-key-two-lines"])
def test_unusable_material_is_named_never_shown(which: str, pki: Pki, tmp_path: Path) -> None:
    secret = "s3cr3t-value-never-shown"
    environ: dict[str, str] = {}
    if which == "missing":
        cfg, expected = (
            settings(pki, ca_file=tmp_path / "nope.pem"),
            (f"{WHERE}.ca_file {tmp_path / 'nope.pem'} does not exist"),
        )
    elif which == "not-pem":
        bad = tmp_path / "ca.pem"
        bad.write_text(secret)
        cfg, expected = settings(pki, ca_file=bad), f"{WHERE}.ca_file {bad} does not hold PEM"
    elif which == "env-unset":
        cfg, expected = ClusterTLS(where=WHERE, api_key_env="EU_KEY"), "$EU_KEY is not set"
    else:
        environ = {"EU_KEY": f"{secret}\nsecond-line"}
        cfg = ClusterTLS(where=WHERE, api_key_env="EU_KEY")
        expected = f"{WHERE}.api_key_env $EU_KEY: must hold one API key"
    with pytest.raises(KeyRingError) as info:
        tls.load(cfg, environ=environ)
    assert expected in info.value.message
    assert secret not in info.value.message


# -- the pool -------------------------------------------------------------------------------


def eu_config(section: dict[str, Any] | None) -> ResolvedConfig:
    return compile_config(default_doc() if section is None else doc_with_tls(section))


async def sync(pool: ClientPool, config: ResolvedConfig) -> None:
    converters = dict.fromkeys(config.table.regions, DataConverter.default)
    await pool.sync(config.table.clusters.values(), converters, tls=config.cluster_tls)


def tls_of(pool: ClientPool, cluster: str) -> Any:
    return pool.service(cluster).config.tls


async def test_pool_connects_with_the_clusters_tls_and_api_key(pki: Pki) -> None:
    pool = ClientPool()
    section = {"ca_file": str(pki.ca), "server_name": "localhost", "api_key_env": "EU_KEY"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EU_KEY", "the-api-key")
        await sync(pool, eu_config(section))
    config = pool.service("eu-west-a").config
    assert isinstance(config.tls, TLSConfig) and config.lazy
    assert config.tls.server_root_ca_cert == pki.ca.read_bytes()
    assert config.tls.domain == "localhost" and config.tls.client_cert is None
    assert config.api_key == "the-api-key"
    plain = pool.service("eu-west-b").config
    assert (plain.tls, plain.api_key) == (False, None)
    assert pool.client("eu-west-a", "eu-west").service_client is pool.service("eu-west-a")


async def test_a_change_of_settings_or_file_contents_reconnects_that_cluster(
    pki: Pki, tmp_path: Path
) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(pki.ca.read_bytes())
    pool = ClientPool()
    await sync(pool, eu_config({"ca_file": str(ca)}))
    first, other = pool.service("eu-west-a"), pool.service("eu-west-b")

    await pool.refresh("eu-west-a")
    await sync(pool, eu_config({"ca_file": str(ca)}))
    assert pool.service("eu-west-a") is first, "nothing changed: same connection"

    ca.write_bytes(pki.other_ca.read_bytes())  # a renewed CA bundle
    await pool.refresh("eu-west-a")
    renewed = pool.service("eu-west-a")
    assert renewed is not first and tls_of(pool, "eu-west-a").server_root_ca_cert == (
        pki.other_ca.read_bytes()
    )
    assert pool.client("eu-west-a", "eu-west").service_client is renewed

    await sync(pool, eu_config({"ca_file": str(ca), "server_name": "localhost"}))
    assert pool.service("eu-west-a") is not renewed
    assert tls_of(pool, "eu-west-a").domain == "localhost"
    await sync(pool, eu_config(None))
    assert tls_of(pool, "eu-west-a") is False, "tls section removed: plaintext"
    assert pool.service("eu-west-b") is other, "other clusters keep their connection"


async def test_unusable_material_makes_only_that_cluster_unavailable(
    pki: Pki, tmp_path: Path
) -> None:
    key = tmp_path / "client.key"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0o644)
    section = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(key)}
    config = eu_config(section)
    pool = ClientPool()
    await sync(pool, config)
    problem = pool.problem("eu-west-a")
    assert problem.startswith(f"{WHERE}.key_file {key} is accessible by group/other")
    assert problem.endswith(f"Fix: chmod 600 {key}")
    for call in (lambda: pool.service("eu-west-a"), lambda: pool.client("eu-west-a", "eu-west")):
        with pytest.raises(ClusterUnavailable) as info:
            call()
        assert info.value.message == f"cluster eu-west-a: cannot connect: {problem}"
        assert info.value.cluster == "eu-west-a" and not info.value.may_have_reached
    assert pool.client("eu-west-b", "eu-west") is not None

    # The prober reports the reason without a network call, and picks up the fix.
    health = HealthMonitor(pool, config.health)
    assert await health.probe(config.table.clusters["eu-west-a"]) == (False, problem)
    key.chmod(0o600)
    await pool.refresh("eu-west-a")
    assert not pool.problem("eu-west-a")
    assert tls_of(pool, "eu-west-a").client_private_key == key.read_bytes()


async def test_files_that_turn_unusable_keep_the_working_connection(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = tmp_path / "client.key"
    key.write_bytes(pki.client_key.read_bytes())
    key.chmod(0o600)
    section = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(key)}
    pool = ClientPool()
    await sync(pool, eu_config(section))
    first = pool.service("eu-west-a")

    key.chmod(0o644)  # by mistake, mid-flight: as a key ring, the last good one serves
    await pool.refresh("eu-west-a")
    await pool.refresh("eu-west-a")
    assert pool.service("eu-west-a") is first and not pool.problem("eu-west-a")
    kept = [r for r in caplog.records if "keeping the connection" in r.getMessage()]
    assert len(kept) == 1 and f"chmod 600 {key}" in kept[0].getMessage()
    key.chmod(0o600)
    await pool.refresh("eu-west-a")
    assert pool.service("eu-west-a") is first, "same contents: nothing to reconnect"

    # A config change cannot keep a connection made for other settings.
    key.chmod(0o644)
    await sync(pool, eu_config({**section, "server_name": "localhost"}))
    assert pool.problem("eu-west-a").endswith(f"Fix: chmod 600 {key}")


# -- secrets never shown ----------------------------------------------------------------------


async def test_no_repr_error_or_log_shows_an_api_key_or_private_key(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = "MARKER-api-key-7f3a9c"
    monkeypatch.setenv("MERIDIAN_TEST_EU_API_KEY", marker)
    key_body = pki.client_key.read_text().splitlines()[1]
    section = {
        "ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key), "api_key_env": "MERIDIAN_TEST_EU_API_KEY",
    }  # fmt: skip
    caplog.set_level(logging.DEBUG)
    config = eu_config(section)
    pool = ClientPool()
    await sync(pool, config)
    creds = tls.load(config.cluster_tls["eu-west-a"])
    assert creds.api_key == marker
    plan = WorkerPlan("eu-west", "eu-west-a", "x:1", (), tls=creds.tls_config(), api_key=marker)

    # A cluster whose material breaks later: the error and the log name the file only.
    broken = tmp_path / "client.key"
    broken.write_bytes(pki.client_key.read_bytes())
    broken.chmod(0o644)
    await sync(pool, eu_config({**section, "key_file": str(broken)}))
    with pytest.raises(ClusterUnavailable) as info:
        pool.service("eu-west-a")

    shown = [
        repr(config), str(config), repr(config.cluster_tls), repr(config.document),
        repr(pool), repr(creds), str(creds), repr(plan), str(info.value), caplog.text,
        pool.problem("eu-west-a"),
    ]  # fmt: skip
    for text in shown:
        assert marker not in text
        assert key_body not in text
    assert "cannot connect" in caplog.text or "not connecting" in caplog.text


# -- temporalio's connect failures, as measured (nginx 1.22 + temporalio 1.35) -----------------

_CONNECT = "Failed client connect: Server connection error: tonic::transport::Error(Transport, "
_AFTER = "Failed client connect: `get_system_info` call error after connection: Status { "
_NGINX = 'metadata: MetadataMap { headers: {"server": "nginx/1.22.1"} }, source: None }'
WRONG_CA = _CONNECT + (
    "ConnectError(Custom { kind: InvalidData, error: InvalidCertificate(UnknownIssuer) }))"
)
WRONG_NAME = _CONNECT + (
    "ConnectError(Custom { kind: InvalidData, error: InvalidCertificate(NotValidForNameContext "
    '{ expected: DnsName("wrong.example"), presented: ["DnsName(\\"localhost\\")", '
    '"IpAddress(127.0.0.1)"] }) }))'
)
NOT_TLS = _CONNECT + (
    "ConnectError(Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }))"
)


def http_answer(status: str) -> str:
    return _AFTER + (
        'code: Internal, message: "protocol error: received message with invalid compression '
        f'flag: 60 (valid flags are 0 and 1) while receiving response with status: {status}", '
        + _NGINX
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (WRONG_CA, "TLS handshake failed: the server's certificate is not signed by a CA the "
                   "router trusts; check the cluster's tls.ca_file"),
        (WRONG_NAME, "TLS handshake failed: the server's certificate is not valid for "
                     "wrong.example; check the cluster's tls.server_name"),
        (NOT_TLS, "TLS handshake failed: the endpoint does not speak TLS"),
        (_CONNECT + "ConnectError(Custom { kind: InvalidData, error: "
         "AlertReceived(CertificateRequired) }))",
         "TLS handshake failed: the server refused the client certificate "
         "(CertificateRequired); check the cluster's tls.cert_file and tls.key_file"),
        (_CONNECT + "InconsistentKeys(KeyMismatch))",
         "TLS set-up failed: the client key is unusable or not the certificate's; check the "
         "cluster's tls.cert_file and tls.key_file"),
        (http_answer("400 Bad Request"),
         "the endpoint answered HTTP 400 Bad Request, as a TLS proxy does to a missing or "
         "untrusted client certificate; check the cluster's tls.cert_file and tls.key_file"),
        (http_answer("401 Unauthorized"),
         "the endpoint answered HTTP 401 Unauthorized; check the cluster's tls.api_key_file "
         "or tls.api_key_env"),
        (_AFTER + 'code: Cancelled, message: "operation was canceled", source: Some(tonic::'
         'transport::Error(Transport, hyper::Error(Canceled, "connection closed"))) }',
         "the endpoint broke off the connection while connecting, as a TLS endpoint does to "
         "a plaintext client; does the cluster need a tls section?"),
        (_AFTER + 'code: Internal, message: "h2 protocol error: http2 error", source: Some(tonic'
         "::transport::Error(Transport, hyper::Error(Http2, Error { kind: GoAway }))) }",
         "the endpoint broke off the connection while connecting, as a TLS endpoint does to "
         "a plaintext client; does the cluster need a tls section?"),
        ("Failed client connect: Server connection error: tonic::transport::Error(Transport, "
         "ConnectError(ConnectError(\"tcp connect error\", Os { code: 111, kind: "
         "ConnectionRefused, message: \"Connection refused\" })))", None),
    ],
    ids=["wrong-ca", "wrong-name", "not-tls", "client-cert-alert", "key-mismatch",
         "proxy-400", "proxy-401", "plaintext-to-tls", "plaintext-to-tls-h2", "refused"],
)  # fmt: skip
def test_connect_failures_say_why_and_what_to_check(text: str, expected: str | None) -> None:
    assert connect_failure(RuntimeError(text)) == expected
    error = translate(RuntimeError(text), cluster="eu-west-a", what="StartWorkflow")
    assert isinstance(error, ClusterUnavailable) and not error.may_have_reached
    if expected is None:
        assert (
            error.message == "cluster eu-west-a refused the connection (StartWorkflow was not sent)"
        )
    else:
        assert error.message == f"cluster eu-west-a: {expected} (StartWorkflow was not sent)"
        assert _short(RuntimeError(text)) == expected, "the prober's last_error says the same"


def test_a_proxys_answer_to_a_call_already_sent_is_not_a_connect_failure() -> None:
    # nginx answers 502 when its upstream fails, possibly after forwarding the call.
    exc = RPCError(
        "protocol error: ... while receiving response with status: 502 Bad Gateway",
        RPCStatusCode.UNAVAILABLE, b"",
    )  # fmt: skip
    assert connect_failure(exc) is None
    error = translate(exc, cluster="eu-west-a", what="StartWorkflow")
    assert isinstance(error, ClusterUnavailable) and error.may_have_reached


@pytest.mark.parametrize("status", [RPCStatusCode.UNAUTHENTICATED, RPCStatusCode.PERMISSION_DENIED])
def test_rejected_credentials_are_unavailable_and_not_acted_on(status: RPCStatusCode) -> None:
    error = translate(
        RPCError("Request unauthorized.", status, b""), cluster="eu-west-a", what="StartWorkflow"
    )
    assert isinstance(error, ClusterUnavailable) and not error.may_have_reached
    assert error.message == (
        "cluster eu-west-a refused the router's credentials for StartWorkflow (Request "
        "unauthorized.); check the cluster's tls.api_key_file or tls.api_key_env"
    )


def test_a_refusal_says_why_the_active_cluster_is_unhealthy() -> None:
    table = compile_config(default_doc()).table
    reason = "TLS handshake failed: the endpoint does not speak TLS"
    base = {r.name: r.primary.name for r in table.regions.values()}
    view = ClusterView(
        active=MappingProxyType(base),
        healthy=frozenset(table.clusters) - {"eu-west-a"},
        why_unhealthy=MappingProxyType({"eu-west-a": reason}),
    )
    req = RouteRequest(
        workflow_type="EchoWorkflow", tenant_id="acme", user_country="DE",
        data_class=DataClass.PII, user_subdivision=None, priority=Priority.NORMAL,
    )  # fmt: skip
    out = route(req, table, view)
    assert isinstance(out, Refusal) and out.kind is RefusalKind.NO_HEALTHY_TARGET
    assert out.message == (
        "no healthy cluster for pii data in zone eu: region eu-west: active cluster eu-west-a "
        f"is not healthy ({reason})"
    )
