"""deploy/grafana/meridian.json: a dashboard Grafana loads — the structure its provisioning
reads (unique ids, a 24-column grid without overlaps, Prometheus targets with an expr and a
refId, the data source variable), PromQL the real Prometheus parser accepts (promtool),
and only metric names the routers serve (router.metrics.NAMES)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.unit.prom import (
    JOB,
    as_promql,
    assert_promtool_ok,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    metric_families,
    unpinned,
)

DASHBOARD = dashboard()
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Panel types of a stock Grafana (no plugins needed).
PANEL_TYPES = {"row", "timeseries", "stat", "state-timeline", "table", "gauge", "bargauge",
               "text", "heatmap"}  # fmt: skip
# What Grafana substitutes itself in an expr; the rest must be the dashboard's variables.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
VARIABLE = re.compile(r"\$\{?(\w+)")
PANELS = dashboard_panels(DASHBOARD)
EXPRS = dashboard_exprs(DASHBOARD)


def test_dashboard_header() -> None:
    assert DASHBOARD["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", DASHBOARD["uid"])
    assert isinstance(DASHBOARD["schemaVersion"], int) and DASHBOARD["schemaVersion"] >= 36
    assert "id" not in DASHBOARD or DASHBOARD["id"] is None  # provisioning assigns it
    assert DASHBOARD["time"]["from"] and DASHBOARD["time"]["to"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"


def test_panel_ids_are_unique_and_the_grid_holds_together() -> None:
    panels = dashboard_panels(DASHBOARD, rows=True)
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    taken: dict[tuple[int, int], str] = {}
    for p in panels:
        assert p["type"] in PANEL_TYPES, (p["title"], p["type"])
        g = p["gridPos"]
        assert all(isinstance(g[k], int) for k in "xywh"), p["title"]
        assert g["x"] >= 0 and g["y"] >= 0 and g["w"] > 0 and g["h"] > 0, p["title"]
        assert g["x"] + g["w"] <= 24, f"{p['title']}: wider than the 24-column grid"
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[x, y]}"
                taken[x, y] = p["title"]


@pytest.mark.parametrize("panel", PANELS, ids=[p["title"] for p in PANELS])
def test_each_panel_queries_prometheus(panel: dict[str, Any]) -> None:
    assert panel["title"].strip() and panel.get("description", "").strip()
    assert panel["datasource"] == DATASOURCE
    refs = [t["refId"] for t in panel["targets"]]
    assert refs and len(refs) == len(set(refs)), refs
    variables = {v["name"] for v in DASHBOARD["templating"]["list"]}
    for t in panel["targets"]:
        assert t["datasource"] == DATASOURCE and t["expr"].strip(), t
        used = set(VARIABLE.findall(t["expr"]))
        assert used <= variables | BUILTIN_VARIABLES, used - variables - BUILTIN_VARIABLES
    if panel["type"] not in {"table", "text"}:
        assert "fieldConfig" in panel and "defaults" in panel["fieldConfig"]


def test_every_expr_names_only_metrics_the_routers_serve() -> None:
    assert not unpinned(EXPRS), unpinned(EXPRS)
    for where, expr in EXPRS:
        assert "job=" not in expr or f'job="{JOB}"' in expr, where


def test_the_dashboard_shows_what_on_call_looks_at() -> None:
    used = set().union(*(metric_families(e) for _, e in EXPRS))
    wanted = {
        "meridian_decisions_total", "meridian_start_duration_seconds",
        "meridian_start_router_added_seconds", "meridian_cluster_healthy",
        "meridian_cluster_active", "meridian_cluster_failed_over", "meridian_flips_total",
        "meridian_config_reloads_total", "meridian_config_pending",
        "meridian_audit_commit_duration_seconds", "meridian_audit_write_failures_total",
        "meridian_audit_queue_depth", "meridian_audit_last_checkpoint_age_seconds",
        "meridian_codec_failures_total", "meridian_leader", "meridian_consul_reachable",
    }  # fmt: skip
    assert wanted <= used, sorted(wanted - used)
    quantiles = " ".join(e for _, e in EXPRS if "histogram_quantile" in e)
    for histogram in ("meridian_start_duration_seconds", "meridian_start_router_added_seconds"):
        assert f"{histogram}_bucket" in quantiles
        for q in ("0.5", "0.99"):
            assert f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket" in quantiles


def test_prometheus_parses_every_expr(tmp_path: Path) -> None:
    """Each expr, with Grafana's variables filled in, as a recording rule for promtool:
    Prometheus's own parser and type checks (a range vector where an instant one is due,
    a misspelt function), not a regex's opinion."""
    exprs = [promql for _, expr in EXPRS if (promql := as_promql(expr))]
    rules = [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-exprs.yaml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_promtool_ok("check", "rules", str(path))
