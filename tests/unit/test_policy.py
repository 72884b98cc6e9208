"""Table-driven tests of the pure routing policy (router/core/policy.py)."""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.config import load_text
from router.config.iso3166 import countries
from router.core.model import (
    ClusterView,
    DataClass,
    Decision,
    Level,
    Priority,
    Refusal,
    RefusalKind,
    RouteRequest,
    RoutingTable,
    Rule,
)
from router.core.policy import route

US = ["US", "CA"]
# fmt: off
EU = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT",
    "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
    "IS", "LI", "NO", "GB", "CH",
]
# fmt: on
APAC = ["AU", "NZ", "SG", "JP", "KR", "IN"]
HOME = {"us": "us-east", "eu": "eu-west", "apac": "ap-southeast"}


def req(
    country: str,
    data_class: DataClass = DataClass.PII,
    *,
    tenant: str = "acme",
    subdivision: str | None = None,
    workflow_type: str = "DataProcessingWorkflow",
    priority: Priority = Priority.NORMAL,
) -> RouteRequest:
    return RouteRequest(
        workflow_type=workflow_type,
        tenant_id=tenant,
        user_country=country,
        data_class=data_class,
        user_subdivision=subdivision,
        priority=priority,
    )


def view(
    table: RoutingTable, *, down: Iterable[str] = (), active: dict[str, str] | None = None
) -> ClusterView:
    base = {r.name: r.primary.name for r in table.regions.values()}
    base.update(active or {})
    return ClusterView(active=MappingProxyType(base), healthy=frozenset(table.clusters) - set(down))


def decide(table: RoutingTable, r: RouteRequest, **kw: Any) -> Decision:
    out = route(r, table, view(table, **kw))
    assert isinstance(out, Decision), out
    return out


def refuse(table: RoutingTable, r: RouteRequest, **kw: Any) -> Refusal:
    out = route(r, table, view(table, **kw))
    assert isinstance(out, Refusal), out
    return out


ZONE_CASES = [(c, "us") for c in US] + [(c, "eu") for c in EU] + [(c, "apac") for c in APAC]


def test_default_zones_are_exactly_the_specified_countries(table: RoutingTable) -> None:
    assert {c for c, _ in ZONE_CASES} == set(table.country_zone)
    assert len(EU) == 32


@pytest.mark.parametrize("data_class", list(DataClass), ids=lambda d: d.value)
@pytest.mark.parametrize(("country", "zone"), ZONE_CASES, ids=[c for c, _ in ZONE_CASES])
def test_every_zone_country_routes_to_its_home_primary(
    table: RoutingTable, country: str, zone: str, data_class: DataClass
) -> None:
    d = decide(table, req(country, data_class))
    assert (d.zone, d.region, d.cluster) == (zone, HOME[zone], f"{HOME[zone]}-a")
    assert d.rule == "zone-home"
    assert d.namespace == HOME[zone]
    assert d.failed_over is False
    assert d.residency_zone == (zone if data_class.regulated else None)
    assert d.config_version == table.version
    assert f"user country {country} is in zone {zone}" in d.reasons


ZONELESS = ["BR", "ZA", "MX", "AR", "CN", "RU", "AE", "EG"]


@pytest.mark.parametrize("country", ZONELESS)
@pytest.mark.parametrize("data_class", [DataClass.PII, DataClass.FINANCIAL], ids=lambda d: d.value)
def test_regulated_data_of_a_zoneless_country_is_refused(
    table: RoutingTable, country: str, data_class: DataClass
) -> None:
    r = refuse(table, req(country, data_class))
    assert r.kind is RefusalKind.RESIDENCY
    assert country in r.message and "no residency zone" in r.message
    assert r.config_version == table.version


@pytest.mark.parametrize("country", ZONELESS)
@pytest.mark.parametrize(
    "data_class", [DataClass.PUBLIC, DataClass.INTERNAL], ids=lambda d: d.value
)
def test_unregulated_data_of_a_zoneless_country_goes_to_the_default_region(
    table: RoutingTable, country: str, data_class: DataClass
) -> None:
    d = decide(table, req(country, data_class))
    assert (d.region, d.cluster, d.rule) == ("us-east", "us-east-a", "default-region")
    assert d.residency_zone is None


@pytest.mark.parametrize("country", ["US", "DE", "JP", "BR"])
@pytest.mark.parametrize("data_class", list(DataClass), ids=lambda d: d.value)
def test_tenant_residency_decides_for_all_its_data(
    table: RoutingTable, country: str, data_class: DataClass
) -> None:
    d = decide(table, req(country, data_class, tenant="globex"))
    assert (d.zone, d.region, d.cluster) == ("eu", "eu-west", "eu-west-a")
    assert d.residency_zone == "eu"
    assert any("tenant globex declares residency zone eu" in r for r in d.reasons)


def test_tenant_residency_zone_down_refuses_even_public_data(table: RoutingTable) -> None:
    r = refuse(table, req("US", DataClass.PUBLIC, tenant="globex"), down={"eu-west-a"})
    assert r.kind is RefusalKind.NO_HEALTHY_TARGET
    assert r.residency_zone == "eu"


@pytest.mark.parametrize(
    ("priority", "queue"),
    [
        (Priority.NORMAL, "eu-west-DataProcessingWorkflow-queue"),
        (Priority.HIGH, "eu-west-DataProcessingWorkflow-queue-priority"),
        (Priority.LOW, "eu-west-DataProcessingWorkflow-queue-batch"),
    ],
    ids=lambda v: v.value if isinstance(v, Priority) else None,
)
def test_default_task_queue_template_and_priority_suffix(
    table: RoutingTable, priority: Priority, queue: str
) -> None:
    assert decide(table, req("DE", priority=priority)).task_queue == queue


# -- health: fallback within the zone, refusals, failed-over flag --------------------


def test_home_unhealthy_regulated_is_unavailable_and_names_region(table: RoutingTable) -> None:
    r = refuse(table, req("DE", DataClass.PII), down={"eu-west-a"})
    assert r.kind is RefusalKind.NO_HEALTHY_TARGET
    assert "zone eu" in r.message and "eu-west" in r.message and "eu-west-a" in r.message


@pytest.mark.parametrize(
    "data_class", [DataClass.PUBLIC, DataClass.INTERNAL], ids=lambda d: d.value
)
def test_home_unhealthy_unregulated_goes_to_default_region(
    table: RoutingTable, data_class: DataClass
) -> None:
    d = decide(table, req("DE", data_class), down={"eu-west-a"})
    assert (d.region, d.cluster, d.rule) == ("us-east", "us-east-a", "default-region")


def test_no_healthy_cluster_anywhere_refuses_public(table: RoutingTable) -> None:
    r = refuse(table, req("BR", DataClass.PUBLIC), down=set(table.clusters))
    assert r.kind is RefusalKind.NO_HEALTHY_TARGET
    assert r.residency_zone is None


def test_standby_active_is_reported_as_failed_over(table: RoutingTable) -> None:
    d = decide(table, req("DE"), active={"eu-west": "eu-west-b"}, down={"eu-west-a"})
    assert (d.cluster, d.failed_over) == ("eu-west-b", True)
    assert d.endpoint == table.clusters["eu-west-b"].endpoint


def test_unhealthy_standby_is_not_used_while_primary_is_active(table: RoutingTable) -> None:
    # Routing follows the active cluster; it never picks a standby on its own.
    d = decide(table, req("DE"), down={"eu-west-b"})
    assert d.cluster == "eu-west-a"


# -- rules: specificity, qualifiers, templates, residency guard ----------------------

RULES_CONFIG = """
zones:
  us: {countries: [US, CA], home_region: us-east}
  eu: {countries: [DE, FR, GB], home_region: eu-west}
regions:
  us-east:
    zone: us
    clusters: [{name: use-a, endpoint: "h:1"}, {name: use-b, endpoint: "h:2"}]
  us-west:
    zone: us
    clusters: [{name: usw-a, endpoint: "h:3"}]
  eu-west:
    zone: eu
    clusters: [{name: euw-a, endpoint: "h:4", namespaces: [eu-west, eu-west-finance]}]
  eu-central:
    zone: eu
    clusters: [{name: euc-a, endpoint: "h:5"}]
default_region: us-east
tenants:
  globex: {residency_zone: eu}
rules:
  - {name: california, match: {subdivision: US-CA}, region: us-west}
  - {name: canada, match: {country: CA}, region: us-west}
  - {name: eu-zone, match: {zone: eu}, region: eu-central}
  - {name: germany, match: {country: DE}, region: eu-west}
  - name: germany-finance
    match: {country: DE, data_classes: [financial]}
    region: eu-west
    namespace: "{region}-finance"
    task_queue: "fin-{workflow_type}"
  - {name: us-public-west, match: {country: US, data_classes: [public]}, region: us-west}
  - {name: catch-all-public, match: {data_classes: [public, internal]}, region: us-west}
  - {name: reports, match: {workflow_types: [Report]}, region: us-west}
  - {name: acme-us, match: {country: US, tenants: [acme]}, region: us-east}
"""


@pytest.fixture(scope="module")
def rules_table() -> RoutingTable:
    return load_text(RULES_CONFIG, source="rules").table


@pytest.mark.parametrize(
    ("request_", "region", "rule"),
    [
        (req("US", subdivision="US-CA"), "us-west", "california"),
        (req("US", subdivision="US-NY", tenant="x"), "us-east", "zone-home"),
        (req("CA"), "us-west", "canada"),
        (req("DE"), "eu-west", "germany"),
        (req("FR"), "eu-central", "eu-zone"),
        (req("GB", DataClass.PUBLIC), "eu-central", "eu-zone"),
        (req("DE", DataClass.FINANCIAL), "eu-west", "germany-finance"),
        (req("US", DataClass.PUBLIC, tenant="x"), "us-west", "us-public-west"),
        (req("US", DataClass.PII, tenant="x"), "us-east", "zone-home"),
        (req("US", DataClass.PII, tenant="acme"), "us-east", "acme-us"),
        (req("BR", DataClass.PUBLIC), "us-west", "catch-all-public"),
        (req("BR", DataClass.PUBLIC, workflow_type="Report"), "us-west", "catch-all-public"),
        (req("BR", DataClass.INTERNAL, workflow_type="Report"), "us-west", "catch-all-public"),
        (req("US", subdivision="US-CA", tenant="globex"), "eu-central", "eu-zone"),
        (req("DE", tenant="globex"), "eu-west", "germany"),
    ],
    ids=[
        "subdivision-over-country",
        "other-subdivision-falls-to-home",
        "country",
        "country-over-zone",
        "zone",
        "zone-any-class",
        "qualified-over-plain",
        "class-qualifier",
        "class-qualifier-misses",
        "tenant-qualifier",
        "default-rule",
        "equal-qualifiers-file-order",
        "equal-qualifiers-file-order-2",
        "tenant-zone-skips-foreign-rule",
        "tenant-zone-keeps-own-rule",
    ],
)
def test_most_specific_rule_wins(
    rules_table: RoutingTable, request_: RouteRequest, region: str, rule: str
) -> None:
    d = decide(rules_table, request_)
    assert (d.region, d.rule) == (region, rule)


def test_rule_templates_name_namespace_and_queue(rules_table: RoutingTable) -> None:
    d = decide(rules_table, req("DE", DataClass.FINANCIAL, priority=Priority.HIGH))
    assert (d.namespace, d.task_queue) == ("eu-west-finance", "fin-DataProcessingWorkflow-priority")


def test_skipped_rule_is_explained(rules_table: RoutingTable) -> None:
    d = decide(rules_table, req("US", subdivision="US-CA", tenant="globex"))
    assert any(
        "rule california skipped" in r and "outside residency zone eu" in r for r in d.reasons
    )


def test_regulated_falls_back_to_another_region_of_its_zone(rules_table: RoutingTable) -> None:
    d = decide(rules_table, req("DE"), down={"euw-a"})
    assert (d.region, d.rule) == ("eu-central", "zone-fallback")
    # ...and rule templates do not follow the fallback into a region they were not checked for.
    d = decide(rules_table, req("DE", DataClass.FINANCIAL), down={"euw-a"})
    assert (d.region, d.namespace) == ("eu-central", "eu-central")


def test_regulated_never_falls_back_out_of_its_zone(rules_table: RoutingTable) -> None:
    r = refuse(rules_table, req("DE"), down={"euw-a", "euc-a"})
    assert r.kind is RefusalKind.NO_HEALTHY_TARGET and r.residency_zone == "eu"


# -- the residency invariant, for any request and any health/active state ------------


@settings(max_examples=400, deadline=None)
@given(
    country=st.sampled_from(sorted(countries())),
    data_class=st.sampled_from(list(DataClass)),
    tenant=st.sampled_from(["acme", "globex", "x"]),
    down=st.sets(st.sampled_from(["use-a", "use-b", "usw-a", "euw-a", "euc-a"])),
    active_b=st.booleans(),
    subdivision=st.sampled_from([None, "US-CA", "US-NY"]),
)
def test_residency_invariant_holds_for_any_state(
    rules_table: RoutingTable,
    country: str,
    data_class: DataClass,
    tenant: str,
    down: set[str],
    active_b: bool,
    subdivision: str | None,
) -> None:
    if subdivision is not None and country != "US":
        subdivision = None
    r = req(country, data_class, tenant=tenant, subdivision=subdivision)
    v = view(rules_table, down=down, active={"us-east": "use-b"} if active_b else None)
    out = route(r, rules_table, v)
    zone = "eu" if tenant == "globex" else rules_table.country_zone.get(country)
    must_stay = tenant == "globex" or data_class.regulated
    if isinstance(out, Refusal):
        if must_stay and zone is None:
            assert out.kind is RefusalKind.RESIDENCY
        return
    cluster = rules_table.clusters[out.cluster]
    assert cluster.name in v.healthy, "routed to an unhealthy cluster"
    assert cluster.name == v.active[out.region], "routed to a cluster that is not active"
    assert cluster.region == out.region and cluster.zone == out.zone
    if must_stay:
        assert zone is not None and out.zone == zone, f"{out.zone} is outside {zone}"
        assert out.residency_zone == zone


# -- the same properties on a large config (300 regions, 10k tenants, 2k rules) -------
# route() builds candidates lazily and reads rules through an index by tenant; these
# check it against the plain definition (every rule of the request's locations, most
# specific first) and that residency holds there too.


@pytest.fixture(scope="module")
def large() -> RoutingTable:
    from benchmarks.core import large_doc
    from router.config.compile import compile_config

    doc = large_doc(300, 10_000, 2_000)
    # Some rules for one workflow type only, and a region that does not run every type,
    # so the index's type filter and the fallbacks are exercised.
    # And rules that send a location's (unregulated) data out of its zone, so
    # possible_regions has to name regions outside the zone.
    outside = {"us": "eu-west", "eu": "ap-southeast", "apac": "us-east"}
    seen: set[str] = set()
    for i, rule in enumerate(doc["rules"]):
        if i % 7 == 0:
            rule["match"]["workflow_types"] = ["Billing"]
        if i % 5 == 0:
            rule["region"] = outside[doc["regions"][rule["region"]]["zone"]]
            rule["match"]["data_classes"] = ["public", "internal"]
        if i % 3 == 0 and "tenants" in rule["match"]:  # one tenant with many rules
            rule["match"]["tenants"].append("acme")
        generic = {k: v for k, v in rule["match"].items() if k != "tenants"}
        key = repr(sorted((k, sorted(v) if isinstance(v, list) else v) for k, v in generic.items()))
        if i % 13 == 0 and key not in seen:
            rule["match"] = generic  # for every tenant: merged with each tenant's own
            seen.add(key)
    doc["regions"]["eu-r001"]["workflow_types"] = ["EchoWorkflow"]
    return compile_config(doc).table


def _plain_rule(
    r: RouteRequest, table: RoutingTable, zone: str | None, required: str | None
) -> Rule | None:
    """The first rule of the request's locations (most specific first) that qualifies
    and whose region is allowed: the definition the index must agree with."""
    keys: list[tuple[Level, str | None]] = []
    if r.user_subdivision is not None:
        keys.append((Level.SUBDIVISION, r.user_subdivision))
    keys.append((Level.COUNTRY, r.user_country))
    if zone is not None:
        keys.append((Level.ZONE, zone))
    keys.append((Level.DEFAULT, None))
    for key in keys:
        for rule in table.rules.get(key, ()):
            if rule.qualifies(r) and (
                required is None or table.regions[rule.region].zone == required
            ):
                return rule
    return None


@st.composite
def large_case(draw: st.DrawFn, table: RoutingTable) -> tuple[RouteRequest, ClusterView]:
    # Mostly requests a rule was written for (its tenant, its country or a country of
    # its zone), so rules compete; sometimes anyone from anywhere.
    rules = [rule for at in table.rules.values() for rule in at]
    rule = draw(st.sampled_from(rules))
    if rule.level is Level.COUNTRY and rule.location is not None:
        countries_ = [rule.location]
    else:
        zone_ = rule.location or "eu"
        countries_ = sorted(c for c, z in table.country_zone.items() if z == zone_)
    tenants = sorted(rule.tenants) or ["acme", "unknown-tenant"]
    if draw(st.integers(0, 4)) == 0:
        countries_ = ["DE", "FR", "GB", "US", "CA", "JP", "IN", "AU", "BR", "ZA"]
        tenants = [draw(st.sampled_from(sorted(table.tenants))), "unknown-tenant"]
    country = draw(st.sampled_from(countries_))
    r = RouteRequest(
        workflow_type=draw(st.sampled_from(["DataProcessingWorkflow", "EchoWorkflow", "Billing"])),
        tenant_id=draw(st.sampled_from(tenants)),
        user_country=country,
        data_class=draw(st.sampled_from(list(DataClass))),
        user_subdivision=draw(st.sampled_from([None, "US-CA"])) if country == "US" else None,
    )
    clusters = sorted(table.clusters)
    down = draw(st.sets(st.sampled_from(clusters), max_size=60))
    # Whole zones down now and then, so fallbacks run to the end of the zone's list.
    if draw(st.booleans()):
        zone = draw(st.sampled_from(sorted(table.zones)))
        down |= {c for c in clusters if table.clusters[c].zone == zone}
    standby = draw(st.sets(st.sampled_from(sorted(table.regions)), max_size=30))
    active = {n: table.regions[n].clusters[-1].name for n in standby}
    return r, view(table, down=down, active=active)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_large_config_residency_rules_and_possible_regions(
    large: RoutingTable, data: st.DataObject
) -> None:
    from router.core.policy import possible_regions

    r, v = data.draw(large_case(large))
    out = route(r, large, v)
    tenant = large.tenants.get(r.tenant_id)
    declared = tenant.residency_zone if tenant is not None else None
    zone = declared or large.country_zone.get(r.user_country)
    required = declared or (zone if r.data_class.regulated else None)
    # With every cluster healthy, the chosen rule is the plain definition's.
    healthy = route(r, large, view(large))
    plain = _plain_rule(r, large, zone, required)
    if (
        isinstance(healthy, Decision)
        and plain is not None
        and large.regions[plain.region].serves(r.workflow_type)
    ):
        assert healthy.rule == plain.name and healthy.region == plain.region
    if isinstance(out, Refusal):
        if required is None and declared is None and zone is None and r.data_class.regulated:
            assert out.kind is RefusalKind.RESIDENCY
        return
    cluster = large.clusters[out.cluster]
    assert cluster.name in v.healthy and cluster.name == v.active[out.region]
    assert large.regions[out.region].serves(r.workflow_type)
    if required is not None:
        assert out.zone == required, f"{out.zone} is outside {required}"
    # A follow-up that knows only the routing inputs looks where the start could go.
    assert out.region in possible_regions(r, large)
