"""deploy/prometheus: the alert rules and the scrape config, checked by the real promtool
(``check rules``, ``check config``) and unit-tested by it (``test rules`` runs
alerts_test.yaml: input series and the alerts expected at given times); every alert has
a case where it fires and one where it stays silent, and uses only served metric names."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from router.metrics import NAMES
from tests.unit.prom import (
    HISTOGRAMS,
    JOB,
    PROMETHEUS_DIR,
    ROOT,
    assert_promtool_ok,
    metric_families,
    unpinned,
)

ALERTS_FILE = PROMETHEUS_DIR / "alerts.yaml"
TESTS_FILE = PROMETHEUS_DIR / "alerts_test.yaml"
CONFIG_FILE = PROMETHEUS_DIR / "prometheus.yml"
ALERTS: dict[str, Any] = yaml.safe_load(ALERTS_FILE.read_text())
TESTS: dict[str, Any] = yaml.safe_load(TESTS_FILE.read_text())
RULES: list[dict[str, Any]] = [r for g in ALERTS["groups"] for r in g["rules"]]
ALERT_NAMES = [r["alert"] for r in RULES if "alert" in r]


@pytest.mark.parametrize(
    "args",
    [
        ("check", "rules", "deploy/prometheus/alerts.yaml"),
        ("test", "rules", "deploy/prometheus/alerts_test.yaml"),
        ("check", "config", "deploy/prometheus/prometheus.yml"),
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool_accepts(args: tuple[str, ...]) -> None:
    assert_promtool_ok(*args)


def test_the_alerts_an_sre_needs_are_there() -> None:
    assert len(ALERT_NAMES) == len(set(ALERT_NAMES)), ALERT_NAMES
    wanted = {
        "MeridianActiveClusterUnhealthy", "MeridianRegionNoHealthyCluster",
        "MeridianRegulatedRefusalsRising", "MeridianFailedOverTooLong",
        "MeridianAuditWriteFailing", "MeridianAuditCommitSlow", "MeridianAuditCheckpointStale",
        "MeridianConfigRejected", "MeridianNoLeader",
    }  # fmt: skip
    assert wanted <= set(ALERT_NAMES), sorted(wanted - set(ALERT_NAMES))


@pytest.mark.parametrize("rule", RULES, ids=[r.get("alert", r.get("record")) for r in RULES])
def test_each_alert_says_how_bad_and_what_it_means(rule: dict[str, Any]) -> None:
    assert rule["alert"].startswith("Meridian")
    assert rule["labels"]["severity"] in {"critical", "warning"}
    assert rule["annotations"]["summary"].strip()
    assert rule["annotations"]["description"].strip()


def _cases() -> dict[str, dict[str, list[str]]]:
    """alertname -> {"fires": [test names], "silent": [test names]}."""
    out: dict[str, dict[str, list[str]]] = {}
    for test in TESTS["tests"]:
        for case in test.get("alert_rule_test", []):
            kind = "fires" if case.get("exp_alerts") else "silent"
            out.setdefault(case["alertname"], {"fires": [], "silent": []})[kind].append(
                test["name"]
            )
    return out


def test_every_alert_has_a_case_that_fires_and_one_that_stays_silent() -> None:
    cases = _cases()
    # An expectation for a name no rule has would pass silently ("no alerts"): refuse it.
    assert set(cases) <= set(ALERT_NAMES), sorted(set(cases) - set(ALERT_NAMES))
    missing = {
        name: lacking
        for name in ALERT_NAMES
        if (lacking := [k for k in ("fires", "silent") if not cases.get(name, {}).get(k)])
    }
    assert not missing, f"alerts_test.yaml has no case where these alerts {missing}"
    assert TESTS["rule_files"] == ["alerts.yaml"]


def test_alert_exprs_use_only_metrics_the_routers_serve() -> None:
    assert set(NAMES) >= HISTOGRAMS
    exprs = [(r["alert"], r["expr"]) for r in RULES]
    assert not unpinned(exprs), unpinned(exprs)
    # The tests' input series too: a typo there and in an expr would agree with each other.
    series = [
        (f"{t['name']}: {s['series']}", s["series"].split("{")[0])
        for t in TESTS["tests"]
        for s in t.get("input_series", [])
    ]
    assert not unpinned(series), unpinned(series)
    used = set().union(*(metric_families(e) for _, e in exprs))
    assert "meridian_audit_last_checkpoint_age_seconds" in used


def test_alerts_and_scrape_config_agree_on_the_job() -> None:
    config = yaml.safe_load(CONFIG_FILE.read_text())
    jobs = [c["job_name"] for c in config["scrape_configs"]]
    assert JOB in jobs
    for rule in RULES:
        if "job=" in rule["expr"]:
            assert f'job="{JOB}"' in rule["expr"], rule["alert"]
    # rule_files are relative to prometheus.yml: compose mounts them side by side.
    assert config["rule_files"] == ["alerts.yaml"]
    assert (CONFIG_FILE.parent / "alerts.yaml").exists()


def test_readme_explains_every_alert() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "deploy/prometheus/alerts.yaml" in readme
    missing = [name for name in ALERT_NAMES if f"`{name}`" not in readme]
    assert not missing, f"README's alert table lacks {missing}"
