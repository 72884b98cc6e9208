"""What a flip would change for callers: representative requests routed under the
current view and under the hypothetical one, compared. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from router.core.model import ClusterView, DataClass, Decision, RouteRequest, RoutingTable
from router.core.policy import route


@dataclass(frozen=True, slots=True)
class RouteChange:
    requests: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class Impact:
    changes: tuple[RouteChange, ...]
    leaving_cluster: str
    # Running workflows on the cluster being left, from its visibility; None if the
    # cluster could not be asked (then ``running_error`` says why).
    running: int | None
    running_error: str


def representative_requests(table: RoutingTable) -> list[tuple[str, RouteRequest]]:
    """One request per (zone, data class), per tenant with declared residency, and for
    a country in no zone: enough to show every route a flip can move."""
    out: list[tuple[str, RouteRequest]] = []

    def add(label: str, country: str, dc: DataClass, tenant: str = "*") -> None:
        req = RouteRequest(workflow_type="*", tenant_id=tenant, user_country=country, data_class=dc)
        out.append((label, req))

    for zone in sorted(table.zones.values(), key=lambda z: z.name):
        sample = min(zone.countries)
        for dc in DataClass:
            add(f"{dc.value} data of users in zone {zone.name} (e.g. {sample})", sample, dc)
    zoneless = sorted(table.known_countries - table.country_zone.keys())
    if zoneless:
        for dc in (DataClass.PUBLIC, DataClass.INTERNAL):
            add(f"{dc.value} data of users in no zone (e.g. {zoneless[0]})", zoneless[0], dc)
    for tenant in sorted(table.tenants.values(), key=lambda t: t.name):
        if tenant.residency_zone is not None and zoneless:
            add(
                f"any data of tenant {tenant.name} (residency {tenant.residency_zone})",
                zoneless[0], DataClass.PII, tenant.name,
            )  # fmt: skip
    return out


def _where(table: RoutingTable, req: RouteRequest, view: ClusterView) -> str:
    outcome = route(req, table, view, any_workflow_type=True)
    if isinstance(outcome, Decision):
        return f"{outcome.cluster} ({outcome.region})"
    return f"refused: {outcome.kind.value}"


def route_changes(
    table: RoutingTable, before: ClusterView, after: ClusterView
) -> tuple[RouteChange, ...]:
    changes = []
    for label, req in representative_requests(table):
        was, will = _where(table, req, before), _where(table, req, after)
        if was != will:
            changes.append(RouteChange(label, was, will))
    return tuple(changes)
