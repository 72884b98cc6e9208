"""The resolved runtime config: frozen, no optionals, seconds as floats."""

from __future__ import annotations

from dataclasses import dataclass

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
class ResolvedConfig:
    table: RoutingTable
    temporal: TemporalSettings
    health: HealthSettings
    codec: CodecSettings
    # Where it came from (a path, "embedded default", later a Consul key), for status.
    source: str
    # The validated document, for re-rendering (dev stack, `meridian config show`).
    document: RouterConfig

    @property
    def version(self) -> str:
        return self.table.version
