"""Config layers (files -> Consul -> env) and the config diff SREs read before a push."""

from __future__ import annotations

from typing import Any

import pytest

from router.config import compile_config
from router.config.diff import Change, ConfigChange, diff, document_changes
from router.config.layers import Layer, env_layer, merge, resolve
from router.core.samples import Routed
from router.errors import ConfigError
from tests.helpers import default_doc


@pytest.mark.parametrize(
    ("base", "overlay", "merged"),
    [
        ({"a": 1, "b": {"c": 2, "d": 3}}, {"b": {"c": 9}}, {"a": 1, "b": {"c": 9, "d": 3}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": {"x": 1}}, {"a": None}, {}),
        ({"a": {"x": 1}}, {"a": 5}, {"a": 5}),
        ({}, {"new": {"k": "v"}}, {"new": {"k": "v"}}),
    ],
    ids=["maps merge", "lists replace", "null removes", "scalar replaces map", "adds"],
)
def test_merge_rules(base: dict[str, Any], overlay: dict[str, Any], merged: dict[str, Any]) -> None:
    assert merge(base, overlay) == merged


def test_env_layer_parses_paths_and_scalars() -> None:
    layer = env_layer({
        "MERIDIAN__health__interval_ms": "250",
        "MERIDIAN__failover__mode": "manual",
        "MERIDIAN__codec__compression": "true",
        "OTHER": "x",
    })  # fmt: skip
    assert layer is not None and layer.name == "env"
    assert layer.doc == {
        "health": {"interval_ms": 250},
        "failover": {"mode": "manual"},
        "codec": {"compression": True},
    }
    assert env_layer({"PATH": "/bin"}) is None


def test_resolve_applies_layers_in_order_and_names_them() -> None:
    base = Layer("file:base.yaml", default_doc())
    consul = Layer("consul:meridian/config@7", {"tenants": {"initech": {"residency_zone": "us"}}})
    env = Layer("env", {"health": {"interval_ms": 250}})
    config = resolve([base, consul, env])
    assert config.source == "file:base.yaml + consul:meridian/config@7 + env"
    assert config.table.tenants["initech"].residency_zone == "us"
    assert config.table.tenants["globex"].residency_zone == "eu"
    assert config.health.interval == 0.25


def test_a_bad_layer_rejects_the_whole_merge() -> None:
    base = Layer("file:base.yaml", default_doc())
    bad = Layer("consul:meridian/config@8", {"regions": {"eu-west": {"zone": "mars"}}})
    with pytest.raises(ConfigError) as info:
        resolve([base, bad])
    assert info.value.source == "file:base.yaml + consul:meridian/config@8"
    assert "regions.eu-west.zone: unknown zone 'mars'" in str(info.value)


def test_diff_shows_document_and_route_changes() -> None:
    old = compile_config(default_doc(), source="old")
    doc = default_doc()
    doc["zones"]["eu"]["countries"].remove("CH")
    doc["regions"]["us-east"]["clusters"][1]["endpoint"] = "127.0.0.1:9999"
    new = compile_config(doc, source="new")
    changes, routes = diff(old, new)
    assert (
        ConfigChange(
            "regions.us-east.clusters[1].endpoint",
            Change.CHANGED,
            "127.0.0.1:7234",
            "127.0.0.1:9999",
        )
        in changes
    )
    countries = next(c for c in changes if c.path == "zones.eu.countries")
    assert "CH" in countries.before and "CH" not in countries.after
    # CH moves out of zone eu (and is sampled for that); a standby's endpoint moves nothing.
    assert {r.request.user_country for r in routes} == {"CH"}
    doc["tenants"]["globex"]["residency_zone"] = "us"
    _, routes = diff(old, compile_config(doc, source="new2"))
    (globex,) = [r for r in routes if r.request.tenant_id == "globex"]
    assert isinstance(globex.after, Routed) and globex.after.cluster == "us-east-a"


@pytest.mark.parametrize(
    ("old", "new", "shown"),
    [
        ({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}, "c": 1}, ["~ a.b: [1, 2] -> [1, 3]", "+ c: 1"]),
        ({"a": None, "b": False}, {"a": "x", "b": 0}, ['~ a: null -> "x"', "~ b: false -> 0"]),
        ({"r": []}, {"r": [{"n": "x", "m": None}]}, ['+ r[0]: {"n": "x", "m": null}']),
        ({"r": [{"n": "x"}, {"n": "y"}]}, {"r": [{"n": "x"}]}, ['- r[1]: {"n": "y"}']),
        ({"r": [{"n": "x"}, {"n": "y"}]}, {"r": [{"n": "z"}, {"n": "y"}]},
         ['~ r[0].n: "x" -> "z"']),
        ({"r": [{"n": "x"}, {"n": "y"}]}, {"r": [{"n": "y"}]},
         ['~ r: [{"n": "x"}, {"n": "y"}] -> [{"n": "y"}]']),
        ({"t": {"g": {"z": "eu"}}}, {"t": {}}, ['- t.g: {"z": "eu"}']),
    ],
    ids=["nested", "json scalars", "appended", "truncated", "item by item", "whole", "removed"],
)  # fmt: skip
def test_document_changes_paths(old: Any, new: Any, shown: list[str]) -> None:
    assert [str(c) for c in document_changes(old, new)] == shown
