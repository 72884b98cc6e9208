"""Config validation: each error kind with its dotted path, all errors at once, and the
compiled form (version hash, namespaces, worker queues)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.config import ResolvedConfig, compile_config, load_file, load_text
from router.config.compile import worker_queues
from router.errors import ConfigError
from tests.helpers import default_doc


def errors_of(doc: Any) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        compile_config(doc, source="test")
    return {e.path: e.message for e in info.value.errors}


def mutate(**changes: Any) -> dict[str, Any]:
    doc = default_doc()
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def test_embedded_default_is_valid(default_config: ResolvedConfig) -> None:
    t = default_config.table
    assert set(t.zones) == {"us", "eu", "apac"}
    assert [c.name for c in t.regions["eu-west"].clusters] == ["eu-west-a", "eu-west-b"]
    assert t.default_region == "us-east"
    assert t.tenants["globex"].residency_zone == "eu"
    assert t.country_zone["NO"] == "eu", "YAML 1.1 must not turn Norway into False"


def test_test_helper_default_doc_matches_embedded_file(default_config: ResolvedConfig) -> None:
    assert compile_config(default_doc()).version == default_config.version


ERROR_CASES = [
    ("unknown top-level key", {"zonez": {}}, "zonez", "unknown key"),
    (
        "unknown nested key",
        {"regions__eu-west__clusters__0__port": 1},
        "regions.eu-west.clusters[0].port",
        "unknown key",
    ),
    (
        "bad endpoint",
        {"regions__eu-west__clusters__1__endpoint": "nohost"},
        "regions.eu-west.clusters[1].endpoint",
        "not host:port",
    ),
    (
        "port out of range",
        {"regions__eu-west__clusters__1__endpoint": "h:70000"},
        "regions.eu-west.clusters[1].endpoint",
        "not host:port",
    ),
    (
        "standby in another zone",
        {"regions__eu-west__clusters__1__zone": "us"},
        "regions.eu-west.clusters[1].zone",
        "standby eu-west-b runs in zone us",
    ),
    (
        "country not ISO",
        {"zones__us__countries": ["US", "XX"]},
        "zones.us.countries[1]",
        "not an assigned ISO 3166-1 alpha-2",
    ),
    (
        "unknown home region",
        {"zones__us__home_region": "us-west"},
        "zones.us.home_region",
        "unknown region",
    ),
    (
        "home region of another zone",
        {"zones__us__home_region": "eu-west"},
        "zones.us.home_region",
        "is in zone eu, not us",
    ),
    (
        "region of unknown zone",
        {"regions__eu-west__zone": "mars"},
        "regions.eu-west.zone",
        "unknown zone",
    ),
    ("unknown default region", {"default_region": "nowhere"}, "default_region", "unknown region"),
    (
        "tenant of unknown zone",
        {"tenants__globex__residency_zone": "mars"},
        "tenants.globex.residency_zone",
        "unknown zone",
    ),
    (
        "bad name",
        {"regions__eu-west__clusters__0__name": "EU West"},
        "regions.eu-west.clusters[0].name",
        "not a valid name",
    ),
    (
        "empty clusters",
        {"regions__eu-west__clusters": []},
        "regions.eu-west.clusters",
        "at least 1",
    ),
    (
        "bad template placeholder",
        {"naming__task_queue": "{region}-{tenant}"},
        "naming.task_queue",
        "unknown placeholder {tenant}",
    ),
    (
        "namespace template with workflow type",
        {"naming__namespace": "{workflow_type}"},
        "naming.namespace",
        "unknown placeholder {workflow_type}",
    ),
    (
        "missing priority suffix",
        {"naming__priority_suffix": {"low": "-b", "high": "-p"}},
        "naming.priority_suffix.normal",
        "required",
    ),
    (
        "negative limit",
        {"limits__max_args_bytes": -1},
        "limits.max_args_bytes",
        "greater than or equal to 1",
    ),
    ("missing section", {}, "zones", "required"),
    (
        "store URL with a password",
        {"regions__eu-west__store": "postgresql://eu:hunter2-secret@db.eu:5432/region"},
        "regions.eu-west.store",
        "carries a password",
    ),
    (
        "store URL with a password parameter",
        {"regions__eu-west__store": "postgresql://eu@db.eu/region?password=hunter2-secret"},
        "regions.eu-west.store",
        "carries a password",
    ),
    (
        "store URL with a key passphrase",
        {"regions__eu-west__store": "postgresql://eu@db.eu/region?sslpassword=hunter2-secret"},
        "regions.eu-west.store",
        "carries a password",
    ),
    (
        "store URL of another kind",
        {"regions__eu-west__store": "mysql://eu@db.eu/region"},
        "regions.eu-west.store",
        "not a postgresql://",
    ),
]


@pytest.mark.parametrize(
    ("changes", "path", "fragment"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_each_error_kind_names_its_path(changes: dict[str, Any], path: str, fragment: str) -> None:
    doc = mutate(**changes)
    if not changes:
        del doc["zones"]
    errors = errors_of(doc)
    assert path in errors, f"expected an error at {path}, got {errors}"
    assert fragment in errors[path]
    assert "hunter2" not in repr(errors), "an error repeats a secret"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://eu@db.eu:5432/region?sslmode=verify-full",
        "postgresql:///region?host=/var/run/postgresql",  # a Unix socket: no host part
    ],
)
def test_a_store_url_without_a_password_is_accepted(url: str) -> None:
    doc = mutate(**{"regions__eu-west__store": url})
    assert compile_config(doc).document.regions["eu-west"].store == url


def test_duplicate_country_across_zones() -> None:
    doc = default_doc()
    doc["zones"]["us"]["countries"].append("DE")
    errors = errors_of(doc)
    assert "zones.us.countries[2]" in errors or "zones.eu.countries[10]" in errors
    msg = next(m for p, m in errors.items() if "countries" in p)
    assert "DE is already in zone" in msg and "exactly one zone" in msg


def test_duplicate_cluster_names_and_endpoints() -> None:
    doc = default_doc()
    doc["regions"]["us-east"]["clusters"][1]["name"] = "eu-west-a"
    doc["regions"]["us-east"]["clusters"][1]["endpoint"] = "127.0.0.1:7235"
    errors = errors_of(doc)
    assert "duplicate cluster name" in errors["regions.eu-west.clusters[0].name"] or any(
        "duplicate cluster name" in m for m in errors.values()
    )
    assert any("is also the endpoint of" in m for m in errors.values())


def test_all_errors_are_reported_at_once() -> None:
    doc = mutate(
        zonez={},
        default_region="nowhere",
        **{
            "regions__eu-west__clusters__1__zone": "us",
            "regions__us-east__clusters__0__endpoint": "bad",
            "tenants__globex__residency_zone": "mars",
            "naming__task_queue": "{tenant}",
        },
    )
    errors = errors_of(doc)
    assert {
        "zonez",
        "default_region",
        "regions.eu-west.clusters[1].zone",
        "regions.us-east.clusters[0].endpoint",
        "tenants.globex.residency_zone",
        "naming.task_queue",
    } <= set(errors)


def test_broken_section_does_not_hide_other_sections_errors() -> None:
    doc = mutate(**{"regions__us-east__clusters__0__endpoint": "bad"})
    doc["zones"]["us"]["countries"] = ["US", "CA", "DE"]
    errors = errors_of(doc)
    assert "regions.us-east.clusters[0].endpoint" in errors
    assert any("DE is already in zone" in m for m in errors.values())
    # us-east is defined (if broken): references to it are not also "unknown".
    assert "default_region" not in errors and "zones.us.home_region" not in errors


RULE_CASES = [
    (
        "pii rule leaving the zone",
        {"name": "r", "match": {"country": "DE"}, "region": "us-east"},
        "rules[0].region",
        "would leave its zone",
    ),
    (
        "subdivision rule leaving the zone",
        {"name": "r", "match": {"subdivision": "US-CA"}, "region": "eu-west"},
        "rules[0].region",
        "would leave its zone",
    ),
    (
        "two locations",
        {"name": "r", "match": {"country": "DE", "zone": "eu"}, "region": "eu-west"},
        "rules[0].match",
        "at most one of",
    ),
    ("unknown region", {"name": "r", "region": "mars"}, "rules[0].region", "unknown region"),
    (
        "unknown match zone",
        {"name": "r", "match": {"zone": "mars"}, "region": "eu-west"},
        "rules[0].match.zone",
        "unknown zone",
    ),
    (
        "bad subdivision",
        {"name": "r", "match": {"subdivision": "US-XX"}, "region": "us-east"},
        "rules[0].match.subdivision",
        "not an ISO 3166-2",
    ),
    (
        "bad data class",
        {"name": "r", "match": {"data_classes": ["secret"]}, "region": "us-east"},
        "rules[0].match.data_classes[0]",
        "should match pattern",
    ),
    ("builtin name", {"name": "zone-home", "region": "us-east"}, "rules[0].name", "built-in"),
    (
        "namespace not served",
        {"name": "r", "match": {"country": "DE"}, "region": "eu-west", "namespace": "{region}-x"},
        "regions.eu-west.clusters[0].namespaces",
        "missing namespace 'eu-west-x'",
    ),
]


@pytest.mark.parametrize(
    ("rule", "path", "fragment"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES]
)
def test_rule_errors(rule: dict[str, Any], path: str, fragment: str) -> None:
    doc = default_doc()
    doc["rules"] = [rule]
    if "namespace" in rule:
        for c in doc["regions"]["eu-west"]["clusters"]:
            c["namespaces"] = ["eu-west"]
    errors = errors_of(doc)
    assert path in errors, errors
    assert fragment in errors[path]


def test_public_only_rule_may_cross_zones() -> None:
    doc = default_doc()
    doc["rules"] = [
        {"name": "r", "match": {"country": "DE", "data_classes": ["public"]}, "region": "us-east"}
    ]
    compile_config(doc)


def test_shadowed_rule_is_rejected() -> None:
    doc = default_doc()
    doc["rules"] = [
        {
            "name": "a",
            "match": {"country": "DE", "data_classes": ["pii", "public"]},
            "region": "eu-west",
        },
        {
            "name": "b",
            "match": {"country": "DE", "data_classes": ["public", "pii"]},
            "region": "eu-west",
        },
    ]
    assert "same match as rules[0]" in errors_of(doc)["rules[1].match"]


def test_rule_namespaces_default_into_cluster_namespaces() -> None:
    doc = default_doc()
    doc["rules"] = [
        {
            "name": "fin",
            "match": {"country": "DE", "data_classes": ["financial"]},
            "region": "eu-west",
            "namespace": "{region}-fin",
        }
    ]
    c = compile_config(doc)
    assert c.table.clusters["eu-west-a"].namespaces == ("eu-west", "eu-west-fin")
    assert c.table.clusters["us-east-a"].namespaces == ("us-east",)


def test_yaml_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_text("zones: [unclosed", source="x.yaml")
    assert "invalid YAML" in str(info.value) and "line 1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_text("zones: {}\nzones: {}\n", source="x.yaml")
    assert "duplicate key 'zones'" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_text("- a list\n", source="x.yaml")
    assert "must be a mapping" in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_file(tmp_path / "missing.yaml")
    assert "cannot read" in str(info.value)


def test_version_is_a_content_hash() -> None:
    doc = default_doc()
    v1 = compile_config(doc).version
    reordered = dict(reversed(list(copy.deepcopy(doc).items())))
    assert compile_config(reordered).version == v1, "key order must not change the version"
    text = yaml.safe_dump(doc)
    assert load_text(text, source="a").version == v1
    doc["regions"]["eu-west"]["clusters"][1]["endpoint"] = "127.0.0.1:9999"
    assert compile_config(doc).version != v1


def test_worker_queues_cover_every_routable_queue(default_config: ResolvedConfig) -> None:
    queues = worker_queues(default_config.table, "eu-west", ["DataProcessingWorkflow"])
    assert set(queues) == {
        ("eu-west", "eu-west-DataProcessingWorkflow-queue"),
        ("eu-west", "eu-west-DataProcessingWorkflow-queue-priority"),
        ("eu-west", "eu-west-DataProcessingWorkflow-queue-batch"),
    }
