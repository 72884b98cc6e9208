"""Counters aggregated in process (``Tally``) come out as the same Prometheus series a
synchronous OpenTelemetry counter would give."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router import metrics
from router.codec.tally import Tally


def samples(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_tally_is_a_prometheus_counter_with_its_labels() -> None:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    decisions = Tally(meter, "meridian.decisions", labels=("outcome", "zone"), description="d")
    failures = Tally(meter, "meridian.audit.write.failures", labels=(), description="f")
    decisions.add(1, "started", "eu")
    decisions.add(1, "started", "eu")
    decisions.add(1, "refused_residency", "")
    failures.add(1)
    got = samples(registry)
    assert (
        got[("meridian_decisions_total", frozenset({("outcome", "started"), ("zone", "eu")}))] == 2
    )
    assert got[("meridian_decisions_total",
                frozenset({("outcome", "refused_residency"), ("zone", "")}))] == 1  # fmt: skip
    assert got[("meridian_audit_write_failures_total", frozenset())] == 1
    decisions.add(3, "started", "eu")
    assert (
        samples(registry)[
            ("meridian_decisions_total", frozenset({("outcome", "started"), ("zone", "eu")}))
        ]
        == 5
    ), "monotonic: the total, not the change since the last scrape"


def test_collection_on_another_thread_while_adding() -> None:
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    tally = Tally(MeterProvider(metric_readers=[reader]).get_meter("t"), "meridian.x",
                  labels=("k",), description="x")  # fmt: skip
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            samples(registry)

    t = threading.Thread(target=scrape)
    t.start()
    try:
        for i in range(20_000):
            tally.add(1, str(i % 500))  # new keys while collections iterate
    finally:
        stop.set()
        t.join()
    assert (
        sum(v for (name, _), v in samples(registry).items() if name == "meridian_x_total") == 20_000
    )


def test_every_watched_gauge_is_served_under_its_pinned_name() -> None:
    """Each name code watches (metrics.watch("...") anywhere in router/) has an instrument,
    and /metrics serves it under that name: a gauge registered under no instrument was
    read by nobody (meridian_audit_last_checkpoint_age_seconds once was)."""
    root = Path(__file__).resolve().parents[2]
    watched = {
        m.group(1)
        for path in (root / "router").rglob("*.py")
        for m in re.finditer(r'metrics\.watch\(\s*"([a-z_]+)"', path.read_text())
    }
    assert "meridian_audit_last_checkpoint_age_seconds" in watched
    assert watched <= set(metrics.GAUGES), sorted(watched - set(metrics.GAUGES))
    # In a process of its own: a meter provider is installed once per process.
    script = (
        "from router import metrics\n"
        "class Owner: pass\n"
        "owner = Owner()\n"
        "exposition = metrics.setup('test')\n"
        "for name in metrics.GAUGES:\n"
        "    metrics.watch(name, owner, lambda o: [(7.0, {'k': 'v'})])\n"
        "print(exposition.render()[0].decode())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                         text=True, check=True, timeout=60).stdout  # fmt: skip
    served = {
        s.name: s.value
        for family in text_string_to_metric_families(out)
        for s in family.samples
        if s.labels.get("k") == "v"
    }
    assert served == dict.fromkeys(metrics.GAUGES, 7.0), served


def test_watching_a_name_without_an_instrument_is_refused() -> None:
    with pytest.raises(ValueError, match="not an observed gauge"):
        metrics.watch("meridian_nonexistent", object(), lambda o: [])
