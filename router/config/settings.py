"""The resolved runtime config: frozen, no optionals, seconds as floats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
class CodecSettings:
    compression: bool
    compression_min_bytes: int
    cors_origins: tuple[str, ...]
    max_body_bytes: int


@dataclass(frozen=True, slots=True)
class ServerTLS:
    cert_file: Path
    key_file: Path
    # Given: callers present client certificates signed by this CA (mTLS).
    client_ca_file: Path | None
    require_client_cert: bool


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

    @property
    def version(self) -> str:
        return self.table.version
