"""The routing policy: ``route(request, table, view) -> Decision | Refusal``.

Pure: no I/O, no clock, no randomness. Residency is decided first and then only
narrowed, never widened: once a request is bound to a zone, every candidate region,
rule and fallback considered afterwards must lie in that zone (DESIGN invariant 1).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from router.core.model import (
    ClusterView,
    Decision,
    Priority,
    Refusal,
    RefusalKind,
    RegionSpec,
    RouteRequest,
    RoutingTable,
    Rule,
)

# Names of the built-in rules a decision can cite when no configured rule matched.
RULE_ZONE_HOME = "zone-home"
RULE_ZONE_FALLBACK = "zone-fallback"
RULE_DEFAULT_REGION = "default-region"


def route(
    req: RouteRequest, table: RoutingTable, view: ClusterView, *, any_workflow_type: bool = False
) -> Decision | Refusal:
    """``any_workflow_type``: route as if every region ran the request's workflow type
    (for representative requests, which stand for every type: impact and diff views)."""
    reasons: list[str] = []
    # 1. Residency: which zone (if any) the data is bound to.
    bound = _residency(req, table, reasons)
    if isinstance(bound, Refusal):
        return bound
    zone, required = bound

    # 2. The most specific rule whose region is allowed.
    rule = _match_rule(req, table, zone, required, reasons)

    # 3. Candidate regions, preferred first (generated lazily: a request whose first
    #    choice is healthy never builds its zone's whole fallback list). Every one lies
    #    in `required` when set.
    candidates = _candidates(table, rule, zone, required)

    # 4. The first candidate that runs the workflow type and whose active cluster is
    #    healthy.
    tried: dict[str, None] = {}  # ordered, and O(1) membership at 300 regions
    serving = 0
    for region_name, rule_name in candidates:
        if region_name in tried:
            continue
        tried[region_name] = None
        region = table.regions[region_name]
        if required is not None and region.zone != required:  # pragma: no cover - guarded
            # Unreachable by construction (config validation); kept as the last line of
            # defence so that a bug elsewhere fails closed instead of crossing a border.
            continue
        if not any_workflow_type and not region.serves(req.workflow_type):
            reasons.append(
                f"region {region_name} does not run workflow type {req.workflow_type} "
                f"(it runs {', '.join(sorted(region.workflow_types or ()))})"
            )
            continue
        serving += 1
        active_name = view.active.get(region_name, region.primary.name)
        active = table.clusters.get(active_name)
        if active is None or active.region != region_name:
            # A view from another config (a reload in flight) naming a cluster that is
            # not this region's in this table: never route on it (fail closed).
            reasons.append(
                f"region {region_name}: active cluster {active_name} is not one of its clusters"
            )
            continue
        if active_name not in view.healthy:
            why = view.why_unhealthy.get(active_name)
            reasons.append(
                f"region {region_name}: active cluster {active_name} is not healthy"
                + (f" ({why})" if why else "")
            )
            continue
        used_rule = rule if rule is not None and rule_name == rule.name else None
        return _decide(
            req,
            table=table,
            region=region,
            cluster_name=active_name,
            rule_name=rule_name,
            rule=used_rule,
            reasons=reasons,
            required=required,
        )

    if not serving:
        msg = (
            f"workflow type {req.workflow_type} is not run by region "
            f"{' or '.join(tried)}, where this request may go; no worker would pick it up"
        )
        reasons.append(msg)
        return Refusal(RefusalKind.WORKFLOW_TYPE, msg, tuple(reasons), table.version, required)
    scope = f"zone {required}" if required is not None else "any allowed region"
    msg = f"no healthy cluster for {req.data_class.value} data in {scope}: " + "; ".join(
        r for r in reasons if r.startswith("region ")
    )
    return Refusal(RefusalKind.NO_HEALTHY_TARGET, msg, tuple(reasons), table.version, required)


def _residency(
    req: RouteRequest, table: RoutingTable, reasons: list[str]
) -> tuple[str | None, str | None] | Refusal:
    """(the request's zone, the zone its data must stay in), or a refusal."""
    zone = table.residency.get(req.tenant_id)
    if zone is not None:
        reasons.append(
            f"tenant {req.tenant_id} declares residency zone {zone}: it decides for all of "
            "the tenant's data, whatever the user's country"
        )
        return zone, zone
    country_zone = table.country_zone.get(req.user_country)
    if country_zone is None:
        reasons.append(f"user country {req.user_country} is in no residency zone")
    else:
        reasons.append(f"user country {req.user_country} is in zone {country_zone}")
    if not req.data_class.regulated:
        return country_zone, None
    if country_zone is None:
        msg = (
            f"{req.data_class.value} data of a user in {req.user_country} cannot be "
            f"placed: {req.user_country} is in no residency zone, and "
            f"{req.data_class.value} data must stay in its zone"
        )
        reasons.append(msg)
        return Refusal(RefusalKind.RESIDENCY, msg, tuple(reasons), table.version, None)
    reasons.append(f"{req.data_class.value} data must stay in zone {country_zone}")
    return country_zone, country_zone


def possible_regions(req: RouteRequest, table: RoutingTable) -> tuple[str, ...]:
    """Every region ``route`` could choose for a request with these routing inputs under
    ``table``, whatever the clusters' health and for any workflow type (``req``'s is
    ignored): where a follow-up that knows the inputs, not the home, needs to look.
    Empty when the inputs would be refused."""
    bound = _residency(req, table, [])
    if isinstance(bound, Refusal):
        return ()
    zone, required = bound
    found: dict[str, None] = {}
    # The rules route() could pick, for some workflow type: each one that qualifies
    # but for its type list, up to the first that takes every type.
    for rule in _rules_for(req, table, zone):
        if not rule.qualifies_any_type(req):
            continue
        if required is not None and table.regions[rule.region].zone != required:
            continue
        found[rule.region] = None
        if not rule.workflow_types:
            break
    # Then the fallbacks: the zone's regions, and the default region when allowed (the
    # built-in first choice is one of them).
    for region, _ in _candidates(table, None, zone, required):
        found[region] = None
    return tuple(found)


def _rules_for(req: RouteRequest, table: RoutingTable, zone: str | None) -> list[Rule]:
    """The rules a request can match, most specific location first (``RuleIndex``)."""
    out: list[Rule] = []
    for at in table.rule_index.at(req, zone):
        if at is not None:
            out.extend(at.for_tenant(req.tenant_id))
    return out


def _candidates(
    table: RoutingTable, rule: Rule | None, zone: str | None, required: str | None
) -> Iterator[tuple[str, str]]:
    if rule is not None:
        yield rule.region, rule.name
    elif zone is not None:
        yield table.zones[zone].home_region, RULE_ZONE_HOME
    else:
        yield table.default_region, RULE_DEFAULT_REGION
    if zone is not None:
        for r in table.zones[zone].regions:
            yield r, RULE_ZONE_FALLBACK
    if required is None:
        yield table.default_region, RULE_DEFAULT_REGION


def _match_rule(
    req: RouteRequest,
    table: RoutingTable,
    zone: str | None,
    required: str | None,
    reasons: list[str],
) -> Rule | None:
    tenant = req.tenant_id
    for at in table.rule_index.at(req, zone):
        if at is None:
            continue
        for rule in at.for_tenant(tenant):
            if not rule.qualifies(req):
                continue
            if required is not None and table.regions[rule.region].zone != required:
                reasons.append(
                    f"rule {rule.name} skipped: its region {rule.region} is outside "
                    f"residency zone {required}"
                )
                continue
            reasons.append(rule.matched_reason)
            return rule
    return None


def _decide(
    req: RouteRequest,
    *,
    table: RoutingTable,
    region: RegionSpec,
    cluster_name: str,
    rule_name: str,
    rule: Rule | None,
    reasons: list[str],
    required: str | None,
) -> Decision:
    cluster = table.clusters[cluster_name]
    if rule_name == RULE_ZONE_HOME:
        reasons.append(f"home region of zone {region.zone} is {region.name}")
    elif rule_name == RULE_ZONE_FALLBACK:
        reasons.append(f"fell back to region {region.name} of zone {region.zone}")
    elif rule_name == RULE_DEFAULT_REGION:
        reasons.append(f"default region {region.name}")
    failed_over = cluster.name != region.primary.name
    if failed_over:
        reasons.append(
            f"active cluster {cluster.name} (standby; primary {region.primary.name} "
            "is not active) is healthy"
        )
    else:
        reasons.append(f"active cluster {cluster.name} (primary) is healthy")
    namespace, task_queue = names(table, region, rule, req.workflow_type, req.priority)
    return Decision(
        zone=region.zone,
        region=region.name,
        cluster=cluster.name,
        endpoint=cluster.endpoint,
        namespace=namespace,
        task_queue=task_queue,
        rule=rule_name,
        reasons=tuple(reasons),
        config_version=table.version,
        failed_over=failed_over,
        residency_zone=required,
    )


def names(
    table: RoutingTable,
    region: RegionSpec,
    rule: Rule | None,
    workflow_type: str,
    priority: Priority,
) -> tuple[str, str]:
    """Namespace and task queue for a request in ``region`` (templates from the rule
    that chose the region, else the config's defaults; see ``Naming``)."""
    naming = table.naming
    ns_template = rule.namespace if rule is not None and rule.namespace else naming.namespace
    tq_template = rule.task_queue if rule is not None and rule.task_queue else naming.task_queue
    return _render(
        (ns_template, tq_template), region.name, region.zone, workflow_type,
        naming.priority_suffix[priority],
    )  # fmt: skip


@functools.lru_cache(maxsize=8192)
def _render(
    templates: tuple[str, str], region: str, zone: str, workflow_type: str, suffix: str
) -> tuple[str, str]:
    """The names, rendered once per distinct input (a pure function, so memoised: the
    same few regions and workflow types come back on every decision)."""
    ns_template, tq_template = templates
    namespace = ns_template.format(region=region, zone=zone)
    task_queue = tq_template.format(
        region=region, zone=zone, namespace=namespace, workflow_type=workflow_type
    )
    return namespace, task_queue + suffix
