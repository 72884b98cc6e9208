"""The pure core: routing policy and (later) the failover state machine.

No I/O, no clock reads, no asyncio: ``tests/unit/test_core_purity.py`` parses every
module here and fails on an import outside the allowed set.
"""

from router.core.model import (
    ClusterSpec,
    ClusterView,
    DataClass,
    Decision,
    Level,
    Limits,
    Naming,
    Priority,
    Refusal,
    RefusalKind,
    RegionSpec,
    Role,
    RouteRequest,
    RoutingTable,
    Rule,
    TenantSpec,
    ZoneSpec,
)
from router.core.policy import route

__all__ = [
    "ClusterSpec",
    "ClusterView",
    "DataClass",
    "Decision",
    "Level",
    "Limits",
    "Naming",
    "Priority",
    "Refusal",
    "RefusalKind",
    "RegionSpec",
    "Role",
    "RouteRequest",
    "RoutingTable",
    "Rule",
    "TenantSpec",
    "ZoneSpec",
    "route",
]
