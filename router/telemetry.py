"""OpenTelemetry tracing, on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

One trace per request: the caller's span (W3C ``traceparent`` on the gRPC call) -> the
router's server span -> a client span around the start on the chosen cluster, whose
context rides in the workflow's ``_tracer-data`` header -> the regional worker's
RunWorkflow and activity spans (``temporalio.contrib.opentelemetry.TracingInterceptor``).
The header is written by hand because Meridian starts workflows with the raw
StartWorkflowExecution call (see router.temporal.gateway), which interceptors do not see.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from temporalio.api.common.v1 import Payload
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.converter import PayloadConverter

log = logging.getLogger(__name__)

HEADER_KEY = "_tracer-data"  # TracingInterceptor's header, so workers continue the trace
_tracer = trace.get_tracer("meridian.router")


def enabled() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def setup(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Install a tracer provider exporting over OTLP (or to ``exporter``); None when
    tracing is off. ``OTEL_SERVICE_NAME`` overrides the service name."""
    if exporter is None and not enabled():
        return None
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing on: service %s", name)
    return provider


def server_interceptors() -> Sequence[Any]:
    """gRPC server interceptors that continue the caller's trace (none when off)."""
    if not _on():
        return ()
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return (aio_server_interceptor(),)  # type: ignore[no-untyped-call]


def temporal_interceptors() -> Sequence[TracingInterceptor]:
    return (TracingInterceptor(),) if _on() else ()


def _on() -> bool:
    return isinstance(trace.get_tracer_provider(), TracerProvider)


@contextmanager
def start_span(workflow_type: str, cluster: str) -> Iterator[Payload | None]:
    """A client span for one start; yields the header payload that carries it (None
    when tracing is off)."""
    if not _on():
        yield None
        return
    with _tracer.start_as_current_span(
        f"StartWorkflow:{workflow_type}",
        kind=trace.SpanKind.CLIENT,
        attributes={"meridian.cluster": cluster},
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)  # W3C trace context and baggage, as TracingInterceptor
        yield PayloadConverter.default.to_payloads([carrier])[0] if carrier else None


def current_trace_id() -> str:
    """The active span's trace id (hex), or "" when there is none."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""
