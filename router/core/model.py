"""Values of the routing domain: requests, the compiled table, decisions and refusals.

Everything here is a frozen dataclass (or an enum) so a compiled table or a decision can
be shared between coroutines and replicas' logs without copies or locks; a reload builds
a new table and swaps one reference.
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from router.core.failover import Policy


class DataClass(enum.Enum):
    PUBLIC = "public"
    INTERNAL = "internal"
    PII = "pii"
    FINANCIAL = "financial"

    # Members are singletons compared by identity, so identity is a correct hash; Enum's
    # own hashes the name in Python code, once per set or dict lookup of every decision.
    __hash__ = object.__hash__

    @property
    def regulated(self) -> bool:
        """Regulated data must stay in its residency zone, whatever else happens."""
        return self in _REGULATED


_REGULATED = frozenset({DataClass.PII, DataClass.FINANCIAL})


class Priority(enum.Enum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    __hash__ = object.__hash__  # as DataClass's


class Role(enum.Enum):
    PRIMARY = "primary"
    STANDBY = "standby"


class RefusalKind(enum.Enum):
    # No compliant target can exist under this config: retrying will not help.
    RESIDENCY = "residency"
    # No region the request may go to runs its workflow type: retrying will not help.
    WORKFLOW_TYPE = "workflow_type"
    # Compliant targets exist but none is healthy now: retry later.
    NO_HEALTHY_TARGET = "no_healthy_target"


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """The routing inputs of a start, already validated and normalised."""

    workflow_type: str
    tenant_id: str
    user_country: str
    data_class: DataClass
    user_subdivision: str | None = None
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    endpoint: str
    region: str
    zone: str
    role: Role
    namespaces: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RegionSpec:
    name: str
    zone: str
    # Ordered: the primary first, then standbys in failover order.
    clusters: tuple[ClusterSpec, ...]
    # host:port of the region's codec server, if it runs one.
    codec_server: str | None = None
    failover: Policy = Policy()  # noqa: RUF009 - frozen: one shared default is safe
    # The workflow types the region's workers run; None: not declared (any type).
    workflow_types: frozenset[str] | None = None

    @property
    def primary(self) -> ClusterSpec:
        return self.clusters[0]

    def serves(self, workflow_type: str) -> bool:
        return self.workflow_types is None or workflow_type in self.workflow_types


@dataclass(frozen=True, slots=True)
class ZoneSpec:
    name: str
    countries: frozenset[str]
    home_region: str
    # Every region of the zone, home first: the order regulated data falls back in.
    regions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class TenantSpec:
    name: str
    residency_zone: str | None


class Level(enum.IntEnum):
    """How specific a rule's location match is; higher wins."""

    DEFAULT = 0
    ZONE = 1
    COUNTRY = 2
    SUBDIVISION = 3


@dataclass(frozen=True, slots=True)
class Rule:
    """A routing override. The most specific matching rule wins (see ``sort_key``).

    Location: at most one of subdivision/country/zone (none = default). Qualifiers narrow
    it further; an empty qualifier set matches everything.
    """

    name: str
    level: Level
    location: str | None
    region: str
    tenants: frozenset[str] = frozenset()
    data_classes: frozenset[DataClass] = frozenset()
    workflow_types: frozenset[str] = frozenset()
    namespace: str | None = None
    task_queue: str | None = None
    # Position in the config file: the tie-breaker between equally specific rules.
    order: int = 0
    # Derived once (a rule is matched on many requests): its ordering key, and the
    # reason a decision cites when it matches.
    sort_key: tuple[int, int, int] = field(init=False, repr=False, compare=False)
    matched_reason: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        where = "default" if self.location is None else f"{self.level.name.lower()} {self.location}"
        object.__setattr__(self, "sort_key", (-int(self.level), -self.qualifiers, self.order))
        object.__setattr__(
            self, "matched_reason", f"rule {self.name} ({where}) matched: region {self.region}"
        )

    @property
    def qualifiers(self) -> int:
        return sum(1 for q in (self.tenants, self.data_classes, self.workflow_types) if q)

    def qualifies(self, req: RouteRequest) -> bool:
        return (
            (not self.tenants or req.tenant_id in self.tenants)
            and (not self.data_classes or req.data_class in self.data_classes)
            and (not self.workflow_types or req.workflow_type in self.workflow_types)
        )

    def qualifies_any_type(self, req: RouteRequest) -> bool:
        """Whether the rule matches ``req`` for some workflow type."""
        return (not self.tenants or req.tenant_id in self.tenants) and (
            not self.data_classes or req.data_class in self.data_classes
        )


@dataclass(frozen=True, slots=True)
class RuleIndex:
    """The rules of one location, most specific first, split so a request looks only at
    the rules that can match it: the ones that name its tenant, and the ones that name
    no tenant (merged back in specificity order)."""

    generic: tuple[Rule, ...]
    by_tenant: Mapping[str, tuple[Rule, ...]]

    @classmethod
    def of(cls, rules: tuple[Rule, ...]) -> RuleIndex:
        by_tenant: dict[str, list[Rule]] = {}
        for rule in rules:
            for tenant in rule.tenants:
                by_tenant.setdefault(tenant, []).append(rule)
        return cls(
            generic=tuple(r for r in rules if not r.tenants),
            by_tenant=MappingProxyType({t: tuple(rs) for t, rs in by_tenant.items()}),
        )

    def for_tenant(self, tenant: str) -> Iterable[Rule]:
        """The rules that may match a request of ``tenant``, most specific first."""
        named = self.by_tenant.get(tenant)
        if not named:
            return self.generic
        if not self.generic:
            return named
        return heapq.merge(named, self.generic, key=lambda r: r.sort_key)


@dataclass(frozen=True, slots=True)
class RuleIndexes:
    """Every location's ``RuleIndex``, one mapping per level, keyed by the plain code
    (no tuple, no enum to hash on every decision)."""

    subdivision: Mapping[str, RuleIndex]
    country: Mapping[str, RuleIndex]
    zone: Mapping[str, RuleIndex]
    default: RuleIndex | None

    @classmethod
    def of(cls, rules: Mapping[tuple[Level, str | None], tuple[Rule, ...]]) -> RuleIndexes:
        by_level: dict[Level, dict[str, RuleIndex]] = {level: {} for level in Level}
        default = None
        for (level, location), at in rules.items():
            if location is None:
                default = RuleIndex.of(at)
            else:
                by_level[level][location] = RuleIndex.of(at)
        return cls(
            subdivision=MappingProxyType(by_level[Level.SUBDIVISION]),
            country=MappingProxyType(by_level[Level.COUNTRY]),
            zone=MappingProxyType(by_level[Level.ZONE]),
            default=default,
        )

    def at(self, req: RouteRequest, zone: str | None) -> tuple[RuleIndex | None, ...]:
        """The indexes of a request's locations, most specific first (None: no rules
        there)."""
        sub = req.user_subdivision
        return (
            self.subdivision.get(sub) if sub is not None else None,
            self.country.get(req.user_country),
            self.zone.get(zone) if zone is not None else None,
            self.default,
        )


@dataclass(frozen=True, slots=True)
class Naming:
    """Templates for names. Placeholders: namespace {region} {zone};
    task queue {region} {zone} {namespace} {workflow_type}."""

    namespace: str = "{region}"
    task_queue: str = "{region}-{workflow_type}-queue"
    priority_suffix: Mapping[Priority, str] = field(
        default_factory=lambda: MappingProxyType(
            {Priority.LOW: "-batch", Priority.NORMAL: "", Priority.HIGH: "-priority"}
        )
    )


@dataclass(frozen=True, slots=True)
class Limits:
    max_workflow_id_length: int = 1000
    max_workflow_type_length: int = 1000
    max_tenant_id_length: int = 256
    max_request_id_length: int = 256
    # Temporal's default blob size limit: larger payloads are rejected by the server anyway.
    max_args_bytes: int = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class RoutingTable:
    """The compiled, validated routing config. Built only by ``router.config``."""

    version: str
    zones: Mapping[str, ZoneSpec]
    regions: Mapping[str, RegionSpec]
    clusters: Mapping[str, ClusterSpec]
    country_zone: Mapping[str, str]
    default_region: str
    tenants: Mapping[str, TenantSpec]
    # The tenants that declare a residency zone, and it: what route() reads (a fifth of
    # a large tenant list, so a smaller table to miss in on every decision).
    residency: Mapping[str, str]
    # Indexed by (level, location) and each list sorted most specific first.
    rules: Mapping[tuple[Level, str | None], tuple[Rule, ...]]
    # The same rules indexed by tenant too (what route() reads).
    rule_index: RuleIndexes
    naming: Naming
    limits: Limits
    known_countries: frozenset[str]
    known_subdivisions: frozenset[str]


@dataclass(frozen=True, slots=True)
class ClusterView:
    """What the router believes about clusters now: each region's active cluster and
    which clusters are healthy. Produced by the health/failover adapters; pure data."""

    active: Mapping[str, str]
    healthy: frozenset[str]
    # Why an unhealthy cluster is unhealthy (its last probe's error), where known, so a
    # refusal can say it (e.g. a TLS handshake that fails).
    why_unhealthy: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def all_primaries_healthy(cls, table: RoutingTable) -> ClusterView:
        return cls(
            active=MappingProxyType({r.name: r.primary.name for r in table.regions.values()}),
            healthy=frozenset(table.clusters),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes, and why. ``residency_zone`` is the zone the data is bound
    to (None when it may go anywhere); ``zone`` is the zone of the chosen region."""

    zone: str
    region: str
    cluster: str
    endpoint: str
    namespace: str
    task_queue: str
    rule: str
    reasons: tuple[str, ...]
    config_version: str
    failed_over: bool
    residency_zone: str | None


class WorkflowStatus(enum.Enum):
    """A run's status as Meridian reports it (its own enum: temporalio's stays behind
    the Temporal adapter)."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TERMINATED = "terminated"
    CONTINUED_AS_NEW = "continued_as_new"
    TIMED_OUT = "timed_out"

    @property
    def open(self) -> bool:
        return self is WorkflowStatus.RUNNING


@dataclass(frozen=True, slots=True)
class Refusal:
    """No compliant target: the request is refused, never sent somewhere else."""

    kind: RefusalKind
    message: str
    reasons: tuple[str, ...]
    config_version: str
    residency_zone: str | None
