"""The sample requests `config diff` routes under both configs (router/core/samples.py):
which requests they are, that they stay bounded, and what each kind of change shows."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import compile_config
from router.core.model import DataClass, Priority, RefusalKind, RouteRequest, RoutingTable
from router.core.samples import (
    ANY_TENANT,
    ANY_TYPE,
    Refused,
    Routed,
    describe,
    request_changes,
    sample_bound,
    samples,
)
from tests.helpers import default_doc

GERMANY_FINANCE = {
    "name": "de-fin",
    "match": {"country": "DE", "data_classes": ["financial"]},
    "region": "eu-west",
}
JAPAN_PUBLIC = {"name": "jp", "match": {"country": "JP", "data_classes": ["public"]},
                "region": "us-east"}  # fmt: skip
CALIFORNIA = {"name": "ca", "match": {"subdivision": "US-CA"}, "region": "us-east",
              "namespace": "{region}-ca"}  # fmt: skip


def table(doc: dict[str, Any] | None = None) -> RoutingTable:
    return compile_config(doc or default_doc(), source="test").table


def with_rules(*rules: dict[str, Any]) -> dict[str, Any]:
    doc = default_doc()
    doc["rules"] = list(rules)
    return doc


def req(
    country: str, dc: DataClass, *, tenant: str = ANY_TENANT, wt: str = ANY_TYPE,
    subdivision: str | None = None, priority: Priority = Priority.NORMAL,
) -> RouteRequest:  # fmt: skip
    return RouteRequest(wt, tenant, country, dc, subdivision, priority)


def test_default_config_samples_every_zone_no_zone_and_each_tenant() -> None:
    t = table()
    got = {s.request: s.where for s in samples(t, t)}
    for zone, country in (("us", "CA"), ("eu", "AT"), ("apac", "AU")):
        for dc in DataClass:
            assert got[req(country, dc)] == f"zone {zone} (e.g. {country})"
    for dc in DataClass:
        assert got[req("AD", dc)] == "no zone (e.g. AD)"
        assert req("AD", dc, tenant="globex") in got
    assert len(got) == 4 * 4 + 4 == len(samples(t, t))


def test_samples_come_from_both_configs_and_each_rule_match() -> None:
    old = table(with_rules(GERMANY_FINANCE))
    acme = {
        "name": "acme",
        "match": {
            "zone": "eu",
            "tenants": ["acme", "initech"],
            "workflow_types": ["EchoWorkflow"],
            "data_classes": ["pii"],
        },
        "region": "eu-west",
    }
    batch = {"name": "batch", "match": {"workflow_types": ["DataProcessingWorkflow"]},
             "region": "us-east"}  # fmt: skip
    new = table(with_rules(CALIFORNIA, acme, batch))
    got = {s.request: s.where for s in samples(old, new)}
    assert got[req("DE", DataClass.FINANCIAL)] == "DE"  # the old config's rule
    assert got[req("US", DataClass.PII, subdivision="US-CA")] == "US-CA"
    assert req("US", DataClass.PII) in got  # the subdivision's country too
    # Tenants paired with the rule's workflow types, with its data classes only.
    assert req("AT", DataClass.PII, tenant="acme", wt="EchoWorkflow") in got
    assert req("AT", DataClass.PII, tenant="initech", wt="EchoWorkflow") in got
    assert req("AT", DataClass.PUBLIC, tenant="acme", wt="EchoWorkflow") not in got
    # A rule with no location: at every representative, every data class.
    for country in ("CA", "AT", "AU", "AD"):
        for dc in DataClass:
            assert req(country, dc, wt="DataProcessingWorkflow") in got
    assert len(got) <= sample_bound(old, new)


def test_samples_are_bounded_and_linear_in_rules_and_tenants() -> None:
    def config(n: int) -> RoutingTable:
        doc = default_doc()
        doc["rules"] = [
            {"name": f"r{i}", "match": {"country": "DE", "tenants": [f"t{i}"]},
             "region": "eu-west"}
            for i in range(n)
        ]  # fmt: skip
        doc["tenants"] |= {f"u{i}": {"residency_zone": "us"} for i in range(n)}
        return table(doc)

    base = table()
    sizes = [len(samples(base, config(n))) for n in (10, 20, 40)]
    for n, size in zip((10, 20, 40), sizes, strict=True):
        assert size <= sample_bound(base, config(n))
    # Each rule adds 4 (its tenant, every data class), each tenant 4.
    assert sizes[1] - sizes[0] == 10 * 8 and sizes[2] - sizes[1] == 20 * 8


def test_samples_are_deterministic() -> None:
    old, new = table(), table(with_rules(JAPAN_PUBLIC))
    assert samples(old, new) == samples(old, new)
    assert [s.request for s in samples(old, new)][:4] == [req("AU", dc) for dc in DataClass]


def test_a_subdivision_rule_is_reported_for_the_subdivision_only() -> None:
    new = table(with_rules(CALIFORNIA))
    (change,) = request_changes(table(), new)
    assert change.requests == "US-CA any data"
    assert change.summary() == (
        "US-CA any data: us-east/us-east-a ns us-east tq us-east-*-queue -> ns us-east-ca"
    )


def test_a_tenant_and_workflow_type_rule_is_reported() -> None:
    new = table(with_rules({"name": "acme-echo", "match": {"zone": "eu", "tenants": ["acme"],
                            "workflow_types": ["EchoWorkflow"]}, "region": "eu-west",
                            "task_queue": "acme-{workflow_type}"}))  # fmt: skip
    (change,) = request_changes(table(), new)
    assert change.requests == "zone eu (e.g. AT) any data, tenant acme, workflow type EchoWorkflow"
    assert isinstance(change.after, Routed) and change.after.task_queue == "acme-EchoWorkflow"


def test_a_region_that_stops_running_a_type_is_reported() -> None:
    doc = default_doc()
    doc["regions"]["eu-west"]["workflow_types"].remove("EchoWorkflow")
    changes = {c.requests: c for c in request_changes(table(), table(doc))}
    public = changes["zone eu (e.g. AT) public/internal data, workflow type EchoWorkflow"]
    assert isinstance(public.after, Routed) and public.after.region == "us-east"
    pii = changes["zone eu (e.g. AT) pii/financial data, workflow type EchoWorkflow"]
    assert isinstance(pii.after, Refused) and pii.after.kind is RefusalKind.WORKFLOW_TYPE


def test_a_priority_suffix_change_is_reported_per_zone() -> None:
    doc = default_doc()
    doc["naming"]["priority_suffix"]["low"] = "-low"
    changes = request_changes(table(), table(doc))
    assert [c.requests for c in changes] == [
        f"{where} public data, priority low"
        for where in ("zone apac (e.g. AU)", "zone eu (e.g. AT)", "zone us (e.g. CA)",
                      "no zone (e.g. AD)")
    ]  # fmt: skip
    assert changes[0].summary().endswith("-> tq ap-southeast-*-queue-low")


def test_a_country_moving_zone_is_sampled() -> None:
    doc = default_doc()
    doc["zones"]["eu"]["countries"].remove("CH")
    changes = {c.requests: c for c in request_changes(table(), table(doc))}
    assert changes["CH public/internal data"].after == Routed(
        "us", "us-east", "us-east-a", "us-east", "us-east-*-queue", rule="default-region"
    )
    refused = changes["CH pii/financial data"].after  # refused alike: one row
    assert isinstance(refused, Refused) and refused.kind is RefusalKind.RESIDENCY


def test_a_region_moving_zone_alone_says_so() -> None:
    """Only the zone changes (same region, cluster, names): the row still says what."""
    was = Routed("eu", "eu-west", "eu-west-a", "eu-west", "q", "r")
    now = Routed("emea", "eu-west", "eu-west-a", "eu-west", "q", "r")
    assert describe(now, was) == "zone emea"


def test_an_unchanged_config_changes_no_route() -> None:
    assert request_changes(table(), table()) == ()


@pytest.mark.parametrize(
    ("before", "after", "text"),
    [
        (Routed("eu", "eu-west", "eu-west-a", "eu-west", "q", "r"),
         Routed("eu", "eu-west", "eu-west-a", "eu-west-fin", "q", "r2"), "ns eu-west-fin"),
        (Routed("eu", "eu-west", "eu-west-a", "eu-west", "q", "r"),
         Routed("eu", "eu-west", "eu-west-b", "eu-west", "q", "r"), "eu-west/eu-west-b"),
        (Refused(RefusalKind.RESIDENCY, "no"),
         Routed("eu", "eu-west", "eu-west-a", "ns", "q", "r"), "eu-west/eu-west-a ns ns tq q"),
        (Routed("eu", "eu-west", "eu-west-a", "ns", "q", "r"),
         Refused(RefusalKind.RESIDENCY, "no"), "refused (residency): no"),
    ],
    ids=["namespace only", "cluster only", "from a refusal", "to a refusal"],
)  # fmt: skip
def test_describe_names_what_changes(before: Routed | Refused, after: Routed | Refused,
                                     text: str) -> None:  # fmt: skip
    assert describe(after, before) == text


def test_a_flips_impact_is_the_same_samples_under_two_views() -> None:
    """The dry run of a flip (``view_changes``): every request class served by the region
    moves to the new cluster, in the same region, namespace and task queue; nothing of
    another region moves; a tenant whose residency lands there is listed too."""
    from types import MappingProxyType

    from router.core.impact import route_changes
    from router.core.model import ClusterView

    t = table(with_rules(GERMANY_FINANCE))
    now = ClusterView.all_primaries_healthy(t)
    flipped = ClusterView(active=MappingProxyType({**now.active, "eu-west": "eu-west-b"}),
                          healthy=now.healthy)  # fmt: skip
    changes = {c.requests: (c.before, c.after) for c in route_changes(t, now, flipped)}
    assert changes["zone eu (e.g. AT) any data"] == (
        "eu-west/eu-west-a ns eu-west tq eu-west-*-queue", "eu-west/eu-west-b",
    )  # fmt: skip
    assert changes["DE any data"][1] == "eu-west/eu-west-b"  # the rule's country: all of it
    assert any("tenant globex" in k for k in changes), changes
    assert all(before.startswith("eu-west/eu-west-a") for before, _ in changes.values())
    assert route_changes(t, now, now) == ()


def test_a_flip_between_refusals_of_one_kind_changes_nothing() -> None:
    """Neither eu-west cluster is healthy: its requests are refused before and after a
    flip to the other; the messages differ in their health details, the caller's outcome
    does not — no row for them (other data may still move: public data falls back)."""
    from types import MappingProxyType

    from router.core.model import ClusterView
    from router.core.samples import view_changes

    t = table()
    now = ClusterView.all_primaries_healthy(t)
    down = now.healthy - {"eu-west-a", "eu-west-b"}
    why = MappingProxyType({"eu-west-a": "connection refused"})
    sick = ClusterView(active=now.active, healthy=down, why_unhealthy=why)
    flipped = ClusterView(active=MappingProxyType({**now.active, "eu-west": "eu-west-b"}),
                          healthy=down)  # fmt: skip
    changes = view_changes(t, sick, flipped)
    both_refused = [c for c in changes if isinstance(c.before, Refused)
                    and isinstance(c.after, Refused)]  # fmt: skip
    assert both_refused == [], both_refused
