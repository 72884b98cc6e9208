"""The resolved runtime config: frozen, no optionals, seconds as floats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from router.config.schema import RouterConfig
from router.core.authz import AuthPolicy
from router.core.model import RoutingTable
from router.core.quota import Quota


@dataclass(frozen=True, slots=True)
class TemporalSettings:
    call_timeout: float
    connect_timeout: float
    result_wait: float


@dataclass(frozen=True, slots=True)
class HealthSettings:
    interval: float
    failure_interval: float
    timeout: float
    unhealthy_threshold: int
    healthy_threshold: int
    jitter: float


@dataclass(frozen=True, slots=True)
class JWTSettings:
    jwks_file: Path | None
    jwks_url: str | None
    issuer: str
    audience: str
    algorithms: tuple[str, ...]
    leeway: float
    principal_claim: str
    roles_claim: str


@dataclass(frozen=True, slots=True)
class CodecSettings:
    compression: bool
    compression_min_bytes: int
    cors_origins: tuple[str, ...]
    max_body_bytes: int
    # Namespace-scoped bearer tokens a codec server accepts besides its static ones.
    jwt: JWTSettings | None = None
    namespaces_claim: str = "permissions"


@dataclass(frozen=True, slots=True)
class ServerTLS:
    cert_file: Path
    key_file: Path
    # Given: callers present client certificates signed by this CA (mTLS).
    client_ca_file: Path | None
    require_client_cert: bool


@dataclass(frozen=True, slots=True)
class AuthSettings:
    policy: AuthPolicy
    # Certificate fields that name a principal, in order (uri_san, dns_san, cn).
    identity: tuple[str, ...]
    jwt: JWTSettings | None
    denial_audit_interval: float

    @property
    def enabled(self) -> bool:
        return self.policy.enabled


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    tenant: Quota | None
    principal: Quota | None
    tenants: Mapping[str, Quota]
    principals: Mapping[str, Quota]

    def for_tenant(self, tenant: str) -> Quota | None:
        return self.tenants.get(tenant, self.tenant)

    def for_principal(self, principal: str) -> Quota | None:
        return self.principals.get(principal, self.principal)


@dataclass(frozen=True, slots=True)
class ClusterTLS:
    """How to reach one cluster over TLS, as configured: paths and a variable's name,
    never key material or API keys (``router.temporal.tls`` reads them at connect time),
    so its ``repr`` is safe to print."""

    # The config path of the section, e.g. "regions.eu-west.clusters[0].tls": errors
    # about a file name the key that named it.
    where: str
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    # The name the server's certificate must carry; None: the endpoint's host.
    server_name: str | None = None
    api_key_file: Path | None = None
    api_key_env: str | None = None


@dataclass(frozen=True, slots=True)
class ResolvedConfig:
    table: RoutingTable
    temporal: TemporalSettings
    health: HealthSettings
    codec: CodecSettings
    server_tls: ServerTLS | None
    auth: AuthSettings
    quotas: QuotaSettings
    # Where it came from (a path, "embedded default", later a Consul key), for status.
    source: str
    # The validated document, for re-rendering (dev stack, `meridian config show`).
    document: RouterConfig
    # Cluster name -> its TLS settings, for the clusters that have a ``tls`` section.
    cluster_tls: Mapping[str, ClusterTLS] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def version(self) -> str:
        return self.table.version
