"""Meridian's metrics: OpenTelemetry instruments, exported over OTLP (the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``/``..._METRICS_ENDPOINT``) and served for Prometheus at
``/metrics`` on the router's HTTP port (``router.api.http``).

Instruments are created once, here, from the global meter (OpenTelemetry's proxy meter:
a no-op until ``setup`` installs a provider, so code paths pay nearly nothing in tests
and in-process benchmarks). Their Prometheus names (``meridian_*``) are pinned by
``NAMES`` and a test. Labels never carry tenant ids or user data (bounded cardinality):
zone, region, cluster, rule, data class, outcome, RPC, status.

Gauges that describe state (cluster health, active cluster, leadership, queue depth,
config version) are observed when scraped, from the objects that own that state: they
register with ``watch_*`` (held weakly: a closed router stops being reported).
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from router.codec.tally import Tally

log = logging.getLogger(__name__)

_meter = metrics.get_meter("meridian")

# Prometheus name -> what it is. A test pins this list against what /metrics serves.
NAMES: Mapping[str, str] = {
    "meridian_decisions_total": "starts by outcome (started, duplicate, refused_residency, "
    "refused_no_healthy, refused_workflow_type, invalid, denied, unauthenticated, quota, "
    "id_taken, unavailable, error), zone, region, cluster, rule and data class",
    "meridian_start_duration_seconds": "StartWorkflow latency as the router served it",
    "meridian_start_router_added_seconds": "StartWorkflow latency minus the Temporal call",
    "meridian_followup_duration_seconds": "follow-up latency by RPC and status",
    "meridian_followup_temporal_calls": "Temporal calls one follow-up made, by operation and "
    "by how it found the workflow's home (cache, home reference, routing inputs, search)",
    "meridian_cluster_healthy": "1 when the cluster's probes pass (0: failing or unknown)",
    "meridian_cluster_active": "1 when the cluster is its region's active cluster",
    "meridian_cluster_failed_over": "1 when the region's active cluster is not its primary",
    "meridian_cluster_consecutive_failures": "failed probes in a row",
    "meridian_cluster_probe_duration_seconds": "health probe latency",
    "meridian_flips_total": "flips by region, kind (automatic, manual, adopted), result "
    "(done, refused) and rule",
    "meridian_config_reloads_total": "config changes by source (file, consul) and result "
    "(applied, unchanged, rejected, pending)",
    "meridian_config_info": "1, labelled with the config version and source in force",
    "meridian_config_pending": "1 while a valid config change waits to be applied",
    "meridian_audit_commit_duration_seconds": "one group commit: write and fsync",
    "meridian_audit_batch_records": "records per group commit",
    "meridian_audit_queue_depth": "records waiting for the audit writer",
    "meridian_audit_write_failures_total": "audit batches that could not be written",
    "meridian_audit_last_checkpoint_age_seconds": "seconds since the last witnessed checkpoint",
    "meridian_codec_payloads_total": "payloads encoded or decoded, by region and op",
    "meridian_codec_failures_total": "payloads that failed to decode, by region and reason",
    "meridian_codec_server_requests_total": "codec server requests by region and HTTP status",
    "meridian_leader": "1 when this replica is the health authority (leader)",
    "meridian_consul_reachable": "1 when Consul answers (0 when not; absent without Consul)",
}

SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

decisions = Tally(
    _meter, "meridian.decisions",
    labels=("outcome", "zone", "region", "cluster", "rule", "data_class"),
    description=NAMES["meridian_decisions_total"],
)  # fmt: skip
start_duration = _meter.create_histogram(
    "meridian.start.duration", unit="s", description=NAMES["meridian_start_duration_seconds"]
)
router_added = _meter.create_histogram(
    "meridian.start.router_added",
    unit="s",
    description=NAMES["meridian_start_router_added_seconds"],
)
followup_duration = _meter.create_histogram(
    "meridian.followup.duration",
    unit="s",
    description=NAMES["meridian_followup_duration_seconds"],
)
followup_calls = _meter.create_histogram(
    "meridian.followup.temporal_calls", description=NAMES["meridian_followup_temporal_calls"]
)
probe_duration = _meter.create_histogram(
    "meridian.cluster.probe.duration",
    unit="s",
    description=NAMES["meridian_cluster_probe_duration_seconds"],
)
flips = Tally(
    _meter, "meridian.flips", labels=("region", "kind", "result", "rule"),
    description=NAMES["meridian_flips_total"],
)  # fmt: skip
config_reloads = Tally(
    _meter, "meridian.config.reloads", labels=("source", "result"),
    description=NAMES["meridian_config_reloads_total"],
)  # fmt: skip
audit_commit = _meter.create_histogram(
    "meridian.audit.commit.duration",
    unit="s",
    description=NAMES["meridian_audit_commit_duration_seconds"],
)
audit_batch = _meter.create_histogram(
    "meridian.audit.batch.records", description=NAMES["meridian_audit_batch_records"]
)
audit_failures = Tally(
    _meter, "meridian.audit.write.failures", labels=(),
    description=NAMES["meridian_audit_write_failures_total"],
)  # fmt: skip
# meridian_codec_* are counted in router/codec (aead.py, server.py) through the same
# OpenTelemetry meter: the codec package does not import the rest of the router.

# -- state observed at scrape time ----------------------------------------------------

Reading = Iterable[tuple[float, Mapping[str, str]]]
_sources: dict[str, weakref.WeakKeyDictionary[Any, Callable[[Any], Reading]]] = {}


def watch(name: str, owner: Any, read: Callable[[Any], Reading]) -> None:
    """Report gauge ``name`` by calling ``read(owner)`` at each collection, as long as
    ``owner`` lives (held weakly). Only a name of ``GAUGES`` has an instrument to report
    through: anything else would be read by nobody, silently."""
    if name not in GAUGES:
        raise ValueError(f"metrics: {name} is not an observed gauge (router.metrics.GAUGES)")
    _sources.setdefault(name, weakref.WeakKeyDictionary())[owner] = read


def _observe(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        out = []
        for owner, read in list(_sources.get(name, {}).items()):
            try:
                out += [Observation(value, labels) for value, labels in read(owner)]
            except Exception:  # a broken reader must not break the scrape
                log.exception("metrics: reading %s failed", name)
        return out

    return callback


# Prometheus name -> OpenTelemetry instrument of the gauges read at collection (watch()).
GAUGES: Mapping[str, str] = {
    "meridian_cluster_healthy": "meridian.cluster.healthy",
    "meridian_cluster_active": "meridian.cluster.active",
    "meridian_cluster_failed_over": "meridian.cluster.failed_over",
    "meridian_cluster_consecutive_failures": "meridian.cluster.consecutive_failures",
    "meridian_config_info": "meridian.config.info",
    "meridian_config_pending": "meridian.config.pending",
    "meridian_audit_queue_depth": "meridian.audit.queue.depth",
    "meridian_audit_last_checkpoint_age_seconds": "meridian.audit.last_checkpoint_age",
    "meridian_leader": "meridian.leader",
    "meridian_consul_reachable": "meridian.consul.reachable",
}
for _name, _otel in GAUGES.items():
    _meter.create_observable_gauge(
        _otel,
        callbacks=[_observe(_name)],
        description=NAMES[_name],
        unit="s" if _name.endswith("_seconds") else "",
    )


# -- the provider ----------------------------------------------------------------------


class Exposition:
    """What /metrics serves: the Prometheus registry the reader writes into."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


# The process's one exposition, once set up (a meter provider is installed only once).
_installed: list[Exposition] = []


def setup(service_name: str) -> Exposition:
    """Install the process's meter provider (once): a Prometheus reader always, an OTLP
    exporter when the standard OTEL variables name an endpoint."""
    if _installed:
        return _installed[0]
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    readers: list[MetricReader] = [
        PrometheusMetricReader(registry=registry, scope_info_enabled=False)
    ]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"
    ):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    views = [
        View(
            instrument_name="meridian.*duration",
            aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
        ),
        View(
            instrument_name="meridian.start.router_added",
            aggregation=ExplicitBucketHistogramAggregation(SECONDS_BUCKETS),
        ),
        View(
            instrument_name="meridian.audit.batch.records",
            aggregation=ExplicitBucketHistogramAggregation(BATCH_BUCKETS),
        ),
        View(
            instrument_name="meridian.followup.temporal_calls",
            aggregation=ExplicitBucketHistogramAggregation(BATCH_BUCKETS),
        ),
    ]
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = MeterProvider(
        metric_readers=readers, views=views, resource=Resource.create({"service.name": name})
    )
    metrics.set_meter_provider(provider)
    _installed.append(Exposition(registry))
    return _installed[0]


# -- recording helpers for the API edge --------------------------------------------------

_OUTCOMES: tuple[tuple[str, str], ...] = (
    # (error class name, outcome): the first match along the class's MRO wins.
    ("InvalidArgument", "invalid"),
    ("ResidencyUnsatisfiable", "refused_residency"),
    ("WorkflowTypeNotServed", "refused_workflow_type"),
    ("NoHealthyTarget", "refused_no_healthy"),
    ("PermissionDenied", "denied"),
    ("Unauthenticated", "unauthenticated"),
    ("QuotaExceeded", "quota"),
    ("WorkflowIdTaken", "id_taken"),
    ("Unavailable", "unavailable"),
    ("DeadlineExceeded", "unavailable"),
)


def outcome_of(exc: BaseException) -> str:
    """The decisions counter's outcome for a start that ended in ``exc``."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return next((outcome for name, outcome in _OUTCOMES if name in names), "error")


def record_start(
    outcome: str,
    *,
    data_class: str,
    seconds: float,
    zone: str = "",
    region: str = "",
    cluster: str = "",
    rule: str = "",
    temporal_seconds: float | None = None,
    message: str = "",
) -> None:
    decisions.add(1, outcome, zone, region, cluster, rule, data_class)
    start_duration.record(seconds, {"outcome": outcome})
    if temporal_seconds is not None:
        router_added.record(max(0.0, seconds - temporal_seconds))
    if region:
        recent.decision(region)
    if outcome.startswith("refused"):
        recent.refusal(outcome, zone, data_class, message)


# -- recent activity, for the status page ----------------------------------------------


class Recent:
    """Decisions per region per second over the last minute, and the last refusals: what
    the status page charts. In memory, per process; no tenant ids, no user data."""

    WINDOW = 60

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seconds: dict[str, dict[int, int]] = {}
        self.refusals: list[dict[str, str]] = []

    def decision(self, region: str) -> None:
        now = int(self._clock())
        per = self._seconds.setdefault(region, {})
        per[now] = per.get(now, 0) + 1
        if len(per) > self.WINDOW * 2:
            for t in [t for t in per if t <= now - self.WINDOW]:
                del per[t]

    def refusal(self, outcome: str, zone: str, data_class: str, message: str) -> None:
        when = datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds")
        self.refusals.append({
            "time": when.replace("+00:00", "Z"), "outcome": outcome, "zone": zone,
            "data_class": data_class, "message": message[:300],
        })  # fmt: skip
        del self.refusals[:-20]

    def series(self) -> dict[str, list[int]]:
        """Region -> decisions in each of the last ``WINDOW`` seconds, oldest first."""
        now = int(self._clock())
        return {
            region: [per.get(t, 0) for t in range(now - self.WINDOW + 1, now + 1)]
            for region, per in sorted(self._seconds.items())
        }


recent = Recent()
