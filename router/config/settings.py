"""The resolved runtime config: frozen, no optionals, seconds as floats."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from router.config.schema import RouterConfig
from router.core.model import RoutingTable


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
    # Where it came from (a path, "embedded default", later a Consul key), for status.
    source: str
    # The validated document, for re-rendering (dev stack, `meridian config show`).
    document: RouterConfig
    # Cluster name -> its TLS settings, for the clusters that have a ``tls`` section.
    cluster_tls: Mapping[str, ClusterTLS] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def version(self) -> str:
        return self.table.version
