"""The user's config format: every key optional where a default makes sense, unknown keys
fatal. Validated by pydantic, then checked across sections by ``router.config.compile``.

This is deliberately separate from the resolved runtime form (``router.core.model`` and
``router.config.settings``): users write this; the router only ever reads the compiled,
frozen form.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from router.config import iso3166

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAMESPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def _name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid name: lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters"
        )
    return value


def _tenant(value: str) -> str:
    if not TENANT_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid tenant id: letters, digits, '.', '_' and '-', "
            "at most 128 characters"
        )
    return value


def _country(value: str) -> str:
    if value not in iso3166.countries():
        raise ValueError(
            f"{value!r} is not an assigned ISO 3166-1 alpha-2 country code (upper case)"
        )
    return value


def _subdivision(value: str) -> str:
    if value not in iso3166.subdivisions():
        raise ValueError(f"{value!r} is not an ISO 3166-2 subdivision code (e.g. 'US-CA')")
    return value


def _endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host_ok = len(host) > 2
    else:
        host_ok = bool(HOSTNAME_RE.match(host))
    if not sep or not host_ok or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not host:port (e.g. '127.0.0.1:7233')")
    return value


def _namespace(value: str) -> str:
    if not NAMESPACE_RE.match(value):
        raise ValueError(f"{value!r} is not a valid Temporal namespace name")
    return value


def _workflow_type(value: str) -> str:
    if not value or value != value.strip() or len(value) > 1000 or not value.isprintable():
        raise ValueError(f"{value!r} is not a workflow type name (printable, no edge spaces)")
    return value


def _abs_path(value: str) -> str:
    if not value.startswith("/") or "\x00" in value or value != value.strip():
        raise ValueError(f"{value!r} is not an absolute file path")
    return value


def _server_name(value: str) -> str:
    if not HOSTNAME_RE.match(value):
        raise ValueError(f"{value!r} is not a host name (e.g. 'temporal.eu.example.com')")
    return value


# libpq URL parameters that carry a secret (a password, a client key's passphrase).
SECRET_PARAMS = frozenset({"password", "sslpassword"})


def _store_url(value: str) -> str:
    """A region store's URL, without a password: config lives in git and Consul, goes
    through SIGHUP and `config diff`, and holds no secrets (as for cluster TLS). The error
    never repeats the URL."""
    try:
        url = urlsplit(value)
        password = url.password
    except ValueError:
        raise ValueError("not a URL (postgresql://user@host:port/db)") from None
    params = parse_qs(url.query)
    # No host part is a libpq Unix-socket URL (postgresql:///db?host=/var/run/postgresql).
    if url.scheme not in ("postgresql", "postgres") or not (url.netloc or url.path):
        raise ValueError("not a postgresql://user@host:port/db URL")
    if password or params.keys() & SECRET_PARAMS:
        raise ValueError(
            "the URL carries a password: config holds no secrets; give it to the region's "
            "workers through PGPASSWORD or ~/.pgpass (PGPASSFILE), and rotate it"
        )
    return value


def _env_name(value: str) -> str:
    if not ENV_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


Name = Annotated[str, AfterValidator(_name)]
WorkflowTypeName = Annotated[str, AfterValidator(_workflow_type)]
Tenant = Annotated[str, AfterValidator(_tenant)]
Country = Annotated[str, AfterValidator(_country)]
Subdivision = Annotated[str, AfterValidator(_subdivision)]
Endpoint = Annotated[str, AfterValidator(_endpoint)]
NamespaceName = Annotated[str, AfterValidator(_namespace)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
ServerName = Annotated[str, AfterValidator(_server_name)]
StoreURL = Annotated[str, AfterValidator(_store_url)]
EnvName = Annotated[str, AfterValidator(_env_name)]
DataClassName = Annotated[str, Field(pattern="^(public|internal|pii|financial)$")]
PositiveMs = Annotated[int, Field(gt=0, le=3_600_000)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ZoneConfig(_Section):
    countries: list[Country] = Field(min_length=1)
    home_region: Name


class ClusterTLSConfig(_Section):
    """TLS (and an API key) to reach a cluster: paths and names only, never secrets.
    The files are read when the router connects (see ``router.temporal.tls``)."""

    # PEM of the CA that signed the cluster's server certificate; absent: system roots.
    ca_file: AbsPath | None = None
    # Client certificate and its key (mode 0600) for mutual TLS: both or neither.
    cert_file: AbsPath | None = None
    key_file: AbsPath | None = None
    # The name the server's certificate must carry; default: the endpoint's host.
    server_name: ServerName | None = None
    # An API key sent as a bearer token (Temporal Cloud style): from a file (mode 0600)
    # or an environment variable, at most one.
    api_key_file: AbsPath | None = None
    api_key_env: EnvName | None = None


class ClusterConfig(_Section):
    name: Name
    endpoint: Endpoint
    # Where the cluster physically runs; when given it must be its region's zone.
    zone: Name | None = None
    # Namespaces the cluster serves; default: every namespace the naming rules render
    # for its region.
    namespaces: list[NamespaceName] | None = None
    # Present: connect over TLS (an empty section: system roots, no client certificate).
    tls: ClusterTLSConfig | None = None


class FailoverConfig(_Section):
    # automatic: move off an unhealthy active at once; manual: only SREs flip.
    mode: Literal["automatic", "manual"] = "automatic"
    # No flip within this long after the last one (SRE flips, automatic failback).
    wait_period_ms: int = Field(default=5000, ge=0, le=3_600_000)
    # Return to the primary by itself once it has been healthy for failback_after_ms.
    failback: Literal["manual", "automatic"] = "manual"
    failback_after_ms: int = Field(default=60_000, ge=0, le=86_400_000)


class FailoverOverride(_Section):
    """Per-region override: only the keys given replace the global ``failover``."""

    mode: Literal["automatic", "manual"] | None = None
    wait_period_ms: int | None = Field(default=None, ge=0, le=3_600_000)
    failback: Literal["manual", "automatic"] | None = None
    failback_after_ms: int | None = Field(default=None, ge=0, le=86_400_000)


class RegionConfig(_Section):
    zone: Name
    clusters: list[ClusterConfig] = Field(min_length=1)
    failover: FailoverOverride = Field(default_factory=FailoverOverride)
    # Where this region's codec server listens (host:port), if it runs one.
    codec_server: Endpoint | None = None
    # The workflow types this region's workers run. A start of any other type is
    # refused before anything is sent (it would wait on a queue nobody polls).
    # Not given: the region accepts every type.
    workflow_types: list[WorkflowTypeName] | None = Field(default=None, min_length=1)
    # The region's own database for its workloads' data (contacts, bookings): a
    # postgresql:// URL. Not given: SQLite under $MERIDIAN_HOME/regions/<region>/.
    store: StoreURL | None = Field(default=None, repr=False)


class TenantConfig(_Section):
    residency_zone: Name | None = None


class NamingConfig(_Section):
    namespace: str = "{region}"
    task_queue: str = "{region}-{workflow_type}-queue"
    priority_suffix: dict[str, str] = Field(
        default_factory=lambda: {"low": "-batch", "normal": "", "high": "-priority"}
    )


class MatchConfig(_Section):
    subdivision: Subdivision | None = None
    country: Country | None = None
    zone: Name | None = None
    tenants: list[Tenant] = Field(default_factory=list)
    data_classes: list[DataClassName] = Field(default_factory=list)
    workflow_types: list[str] = Field(default_factory=list)


class RuleConfig(_Section):
    name: Name
    match: MatchConfig = Field(default_factory=MatchConfig)
    region: Name
    namespace: str | None = None
    task_queue: str | None = None


class LimitsConfig(_Section):
    max_workflow_id_length: int = Field(default=1000, ge=1, le=10_000)
    max_workflow_type_length: int = Field(default=1000, ge=1, le=10_000)
    max_tenant_id_length: int = Field(default=256, ge=1, le=10_000)
    max_request_id_length: int = Field(default=256, ge=1, le=10_000)
    max_args_bytes: int = Field(default=2 * 1024 * 1024, ge=1, le=64 * 1024 * 1024)


class TemporalConfig(_Section):
    call_timeout_ms: PositiveMs = 2000
    connect_timeout_ms: PositiveMs = 2000
    result_wait_ms: PositiveMs = 30_000


class HealthConfig(_Section):
    interval_ms: PositiveMs = 500
    # After a failed probe, the next comes this soon: a dead cluster is confirmed in
    # (unhealthy_threshold - 1) x failure_interval, not x interval.
    failure_interval_ms: PositiveMs = 100
    timeout_ms: PositiveMs = 400
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)
    healthy_threshold: int = Field(default=2, ge=1, le=100)
    jitter_ms: int = Field(default=50, ge=0, le=60_000)


JwtAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
CertField = Literal["uri_san", "dns_san", "cn"]
RoleName = Literal["sre", "viewer", "auditor"]
Glob = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9._:/@*?-]+$")]


_ALGORITHMS: list[JwtAlgorithm] = ["RS256", "ES256", "EdDSA"]
_CERT_FIELDS: list[CertField] = ["uri_san", "dns_san", "cn"]


class JWTConfig(_Section):
    """Bearer tokens (``authorization: Bearer …``), verified against a JWKS."""

    jwks_file: str | None = Field(default=None, min_length=1)
    jwks_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    # Asymmetric algorithms only: a JWKS holds public keys.
    algorithms: list[JwtAlgorithm] = Field(default_factory=lambda: list(_ALGORITHMS), min_length=1)
    leeway_s: int = Field(default=30, ge=0, le=600)
    # The claim naming the principal, and the claim listing its roles.
    principal_claim: str = Field(default="sub", min_length=1)
    roles_claim: str = Field(default="roles", min_length=1)

    @model_validator(mode="after")
    def _one_key_source(self) -> JWTConfig:
        if (self.jwks_file is None) == (self.jwks_url is None):
            raise ValueError("give exactly one of jwks_file and jwks_url")
        return self


class CodecJWTConfig(JWTConfig):
    """Bearer tokens at a codec server (the Temporal Web UI forwards the user's access
    token): verified like the router's, and scoped per namespace."""

    # The claim listing what the token may touch: namespace names, or Temporal's
    # "<namespace>:<role>" permissions; a token decodes a namespace only if it lists it.
    namespaces_claim: str = Field(default="permissions", min_length=1)


class CodecConfig(_Section):
    # zlib before encryption. Off by default: compressing attacker-influenced data next
    # to secrets can leak through ciphertext length (CRIME/BREACH).
    compression: bool = False
    compression_min_bytes: int = Field(default=1024, ge=0)
    # Origins allowed to call the codec servers from a browser (the Temporal Web UI).
    cors_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s]+$")]] = Field(
        default_factory=list
    )
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    # Besides the region's static tokens, accept namespace-scoped JWTs.
    jwt: CodecJWTConfig | None = None


class AuditConfig(_Section):
    # A new log file when the current one reaches this size or age; the chain continues.
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 40)
    max_file_age_s: int = Field(default=86_400, ge=1, le=365 * 86_400)
    # Signed checkpoints of the chain, published to the witnesses, this often while
    # records are written (and at a clean shutdown); 0: only at shutdown.
    checkpoint_interval_s: float = Field(default=5.0, ge=0, le=3600)
    # The witness directory (another volume or host); --witness-dir overrides it.
    witness_dir: str | None = Field(default=None, min_length=1)


class ServerTLSConfig(_Section):
    """TLS on the router's gRPC port. Files are re-read when they change (rotation
    without a restart); the key file must be mode 0600."""

    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)
    # The CA that signs callers' client certificates: given, the port speaks mTLS and
    # every connection must present a certificate it signed (grpcio cannot ask for a
    # certificate without requiring one). Not given: TLS alone; callers authenticate
    # with bearer tokens (auth.jwt).
    client_ca_file: str | None = Field(default=None, min_length=1)


class ServerConfig(_Section):
    # Not given: plaintext, which is allowed only with auth.enabled: false.
    tls: ServerTLSConfig | None = None


# The WorkflowRouter RPCs a grant lists (RoutingAdmin is granted by role).
RpcName = Literal[
    "StartWorkflow",
    "ExplainRoute",
    "DescribeWorkflow",
    "SignalWorkflow",
    "QueryWorkflow",
    "CancelWorkflow",
    "GetWorkflowResult",
]
_WORKFLOW_RPCS: list[RpcName] = [
    "StartWorkflow",
    "ExplainRoute",
    "DescribeWorkflow",
    "SignalWorkflow",
    "QueryWorkflow",
    "CancelWorkflow",
    "GetWorkflowResult",
]


class GrantConfig(_Section):
    """What one principal may do. Workflow RPCs act only on the tenants listed (globs);
    RoutingAdmin needs a role (flips: sre; topology: sre or viewer)."""

    rpcs: list[RpcName] = Field(default_factory=lambda: list(_WORKFLOW_RPCS))
    tenants: list[Glob] = Field(default_factory=list)
    workflow_types: list[Glob] = Field(default_factory=lambda: ["*"])
    data_classes: list[DataClassName] = Field(
        default_factory=lambda: ["public", "internal", "pii", "financial"]
    )
    roles: list[RoleName] = Field(default_factory=list)


class AuthConfig(_Section):
    # On by default: every request acts as an authenticated principal, and what is not
    # granted is denied. Off (plaintext, anyone may do anything) only by saying so.
    enabled: bool = True
    # Where a client certificate names its principal, first found wins.
    identity: list[CertField] = Field(default_factory=lambda: list(_CERT_FIELDS), min_length=1)
    jwt: JWTConfig | None = None
    # Principal name (certificate identity or the JWT's principal claim) -> grant.
    principals: dict[Annotated[str, Field(min_length=1, max_length=512)], GrantConfig] = Field(
        default_factory=dict
    )
    # Denials and authentication failures: one audit record per principal (or peer)
    # per interval, with a count, so a flood cannot fill the audit disk.
    denial_audit_interval_s: int = Field(default=10, ge=1, le=3600)


class QuotaConfig(_Section):
    rate_per_s: float = Field(gt=0, le=1_000_000)
    burst: int = Field(ge=1, le=10_000_000)


class QuotasConfig(_Section):
    """Start quotas (token buckets), checked before any routing or audit work."""

    # The default for every tenant / principal; not given: no limit.
    tenant: QuotaConfig | None = None
    principal: QuotaConfig | None = None
    tenants: dict[Tenant, QuotaConfig] = Field(default_factory=dict)
    principals: dict[Annotated[str, Field(min_length=1, max_length=512)], QuotaConfig] = Field(
        default_factory=dict
    )


class RouterConfig(_Section):
    """The whole document. Sections are validated one by one (see compile.py) so that a
    broken section does not hide the errors of the others."""

    zones: dict[Name, ZoneConfig] = Field(min_length=1)
    regions: dict[Name, RegionConfig] = Field(min_length=1)
    default_region: Name
    tenants: dict[Tenant, TenantConfig] = Field(default_factory=dict)
    naming: NamingConfig = Field(default_factory=NamingConfig)
    rules: list[RuleConfig] = Field(default_factory=list)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    temporal: TemporalConfig = Field(default_factory=TemporalConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    quotas: QuotasConfig = Field(default_factory=QuotasConfig)
