"""What the alert and dashboard tests share: the real ``promtool`` and ``prometheus``
(Debian's prometheus package; ./scripts/test installs it where missing), the metric names
a PromQL expression uses, checked against the names ``/metrics`` serves
(``router.metrics.NAMES``), and the dashboard's queries as Prometheus runs them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from router.metrics import NAMES

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
GRAFANA_DIR = ROOT / "deploy" / "grafana"
JOB = "meridian-router"  # the scrape job the alerts and the dashboard expect

# The histograms of router.metrics: only these have _bucket, _sum and _count series.
HISTOGRAMS = frozenset({
    "meridian_start_duration_seconds", "meridian_start_router_added_seconds",
    "meridian_followup_duration_seconds", "meridian_cluster_probe_duration_seconds",
    "meridian_audit_commit_duration_seconds", "meridian_audit_batch_records",
})  # fmt: skip
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")
_METRIC = re.compile(r"\bmeridian_[a-z_]+")


def metric_families(text: str) -> set[str]:
    """Every Meridian metric ``text`` names, as the family pinned in NAMES: a histogram's
    ``_bucket``/``_sum``/``_count`` series count as the histogram. A name that is not a
    served series comes back as written, so the caller can report it."""
    out = set()
    for name in _METRIC.findall(text):
        family = name
        for suffix in _SERIES_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
                family = name.removesuffix(suffix)
        out.add(family)
    return out


def unpinned(exprs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """``(where, expr)`` pairs -> the names each uses that /metrics does not serve."""
    bad = {where: metric_families(expr) - set(NAMES) for where, expr in exprs}
    return {where: names for where, names in bad.items() if names}


def prometheus_tool(name: str) -> str:
    """The path of ``promtool`` or ``prometheus`` from Debian's prometheus package; a
    missing one fails the test (never a skip)."""
    exe = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if exe is None:
        pytest.fail(
            f"{name} is missing: it comes with Debian's prometheus package "
            "(apt-get install -y prometheus); ./scripts/test installs it where missing",
            pytrace=False,
        )
    return exe


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the real promtool."""
    exe = prometheus_tool("promtool")
    return subprocess.run(
        [exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def assert_promtool_ok(*args: str) -> None:
    result = promtool(*args)
    assert result.returncode == 0, (
        f"promtool {' '.join(args)} failed (exit {result.returncode}):\n"
        f"{result.stdout}{result.stderr}"
    )


# -- the dashboard's queries ------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((GRAFANA_DIR / "meridian.json").read_text())
    return doc


def dashboard_panels(doc: dict[str, Any], *, rows: bool = False) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included; the rows themselves if ``rows``."""
    out = []
    for p in doc["panels"]:
        out += [p, *p.get("panels", [])]
    return [p for p in out if rows or p["type"] != "row"]


def dashboard_exprs(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """``(where, expr)``: each panel target's expr and each query variable's query."""
    targets = [
        (f"{p['title']} [{t['refId']}]", t["expr"])
        for p in dashboard_panels(doc)
        for t in p["targets"]
    ]
    variables = [
        (
            f"variable {v['name']}",
            v["query"]["query"] if isinstance(v["query"], dict) else v["query"],
        )
        for v in doc["templating"]["list"]
        if v["type"] == "query"
    ]
    return targets + variables


def as_promql(expr: str) -> str | None:
    """A panel's expr as Prometheus runs it once Grafana fills in its variables (the
    region variable at "All"); None for Grafana-only functions (label_values)."""
    if expr.startswith("label_values("):
        return None
    return expr.replace("$__rate_interval", "1m").replace("$region", ".*")
