"""`meridian config diff` as an SRE reads it: the printed table and the parsed `--json`
of a new config against the embedded default, for the changes a review must not miss
(rules that move data or rename its namespace and task queue, a tenant's residency)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.cli import main
from tests.helpers import default_doc, write_config

GERMANY_FINANCE = {
    "name": "germany-finance",
    "match": {"country": "DE", "data_classes": ["financial"]},
    "region": "eu-west",
    "namespace": "{region}-finance",
    "task_queue": "fin-{workflow_type}",
}
JAPAN_PUBLIC = {
    "name": "japan-public-us",
    "match": {"country": "JP", "data_classes": ["public"]},
    "region": "us-east",
}


def run_diff(
    tmp_path: Path, doc: dict[str, Any], capsys: pytest.CaptureFixture[str], *flags: str
) -> str:
    old = write_config(tmp_path / "old.yaml", default_doc())
    new = write_config(tmp_path / "new.yaml", doc)
    capsys.readouterr()
    assert main(["config", "diff", str(new), "--against", str(old), *flags]) == 0
    return capsys.readouterr().out


def table_rows(out: str) -> list[list[str]]:
    """The route-change table's rows, cells split on the column gaps."""
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("requests "))
    return [[c.strip() for c in line.split("  ") if c.strip()] for line in lines[header + 2 :]]


def with_rules(*rules: dict[str, Any]) -> dict[str, Any]:
    doc = default_doc()
    doc["rules"] = list(rules)
    return doc


def test_a_rule_renaming_namespace_and_task_queue_is_a_route_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_diff(tmp_path, with_rules(GERMANY_FINANCE), capsys)
    assert "no route changes" not in out
    assert table_rows(out) == [
        [
            "DE financial data",
            "eu-west/eu-west-a ns eu-west tq eu-west-*-queue",
            "ns eu-west-finance tq fin-*",
        ]
    ]


def test_a_rule_moving_a_country_to_another_region_is_a_route_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_diff(tmp_path, with_rules(JAPAN_PUBLIC), capsys)
    assert table_rows(out) == [
        [
            "JP public data",
            "ap-southeast/ap-southeast-a ns ap-southeast tq ap-southeast-*-queue",
            "us-east/us-east-a ns us-east tq us-east-*-queue",
        ]
    ]


def test_a_tenant_residency_change_is_one_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = default_doc()
    doc["tenants"]["globex"]["residency_zone"] = "us"
    out = run_diff(tmp_path, doc, capsys)
    rows = table_rows(out)
    assert len(rows) == 1, rows
    assert '~ tenants.globex.residency_zone: "eu" -> "us"' in out
    requests, before, after = rows[0]
    assert "tenant globex" in requests and "any data" in requests
    assert before.startswith("eu-west/eu-west-a") and after.startswith("us-east/us-east-a")


def test_table_shows_values_as_json_not_python(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_diff(tmp_path, with_rules(JAPAN_PUBLIC), capsys)
    added = next(line for line in out.splitlines() if line.startswith("+ rules[0]: "))
    rule = json.loads(added.removeprefix("+ rules[0]: "))
    assert rule["region"] == "us-east" and rule["namespace"] is None
    assert "None" not in out and "'" not in out


def test_json_output_is_typed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = with_rules(GERMANY_FINANCE)
    doc["health"]["jitter_ms"] = 0
    doc["codec"]["cors_origins"] = ["http://localhost:8233"]
    del doc["tenants"]["globex"]
    out = json.loads(run_diff(tmp_path, doc, capsys, "--json"))
    changes = {c["path"]: c for c in out["changes"]}
    assert changes["health.jitter_ms"] == {
        "path": "health.jitter_ms", "change": "changed", "before": 50, "after": 0,
    }  # fmt: skip
    assert changes["codec.cors_origins"]["before"] == []
    assert changes["codec.cors_origins"]["after"] == ["http://localhost:8233"]
    assert changes["tenants.globex"] == {
        "path": "tenants.globex", "change": "removed",
        "before": {"residency_zone": "eu"}, "after": None,
    }  # fmt: skip
    rule = changes["rules[0]"]
    assert rule["change"] == "added" and rule["before"] is None
    assert rule["after"]["match"]["subdivision"] is None
    assert rule["after"]["match"]["data_classes"] == ["financial"]
    assert rule["after"]["task_queue"] == "fin-{workflow_type}"
    assert len(out["changes"]) == 4

    routes = {r["requests"]: r for r in out["route_changes"]}
    de = routes["DE financial data"]
    assert de["request"]["user_country"] == "DE"
    assert de["request"]["data_classes"] == ["financial"]
    assert de["before"] == {
        "zone": "eu", "region": "eu-west", "cluster": "eu-west-a", "namespace": "eu-west",
        "task_queue": "eu-west-*-queue", "rule": "zone-home",
    }  # fmt: skip
    assert de["after"]["namespace"] == "eu-west-finance"
    assert de["after"]["task_queue"] == "fin-*"
    assert de["after"]["rule"] == "germany-finance"
    # globex without a residency zone: its regulated data of a user in no zone is refused.
    globex = [r for r in out["route_changes"] if r["request"]["tenant_id"] == "globex"]
    assert [(r["request"]["data_classes"], r["after"].get("refused")) for r in globex] == [
        (["public", "internal"], None), (["pii", "financial"], "residency"),
    ]  # fmt: skip
    assert globex[0]["after"]["region"] == "us-east"  # the default region
    assert "pii data of a user in AD cannot be placed" in globex[1]["after"]["message"]
