"""A tiny in-process OTLP/gRPC collector for tests: the real OTLP protocol
(opentelemetry-proto's TraceService and LogsService), spans and log records kept in
memory. ``stop()`` then ``start(collector.port)`` is an outage of the sink.

A threaded (sync) gRPC server, so it keeps receiving while the test's event loop is
busy (FIELD_NOTES: flushing a provider on the loop that also serves a grpc.aio
collector deadlocks)."""

from __future__ import annotations

import threading
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str


@dataclass(frozen=True)
class LogRecord:
    """One OTLP log record as received; ``batch`` numbers the Export call that carried it."""

    service: str
    attributes: dict[str, Any]
    body: str
    time_unix_nano: int
    event_name: str
    batch: int


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def Export(self, request: Any, context: Any) -> Any:
        c = self.collector
        with c._lock:
            c.log_batches += 1
            for rl in request.resource_logs:
                service = {a.key: _value(a.value) for a in rl.resource.attributes}
                for sl in rl.scope_logs:
                    for r in sl.log_records:
                        c.logs.append(LogRecord(
                            str(service.get("service.name", "")),
                            {a.key: _value(a.value) for a in r.attributes},
                            r.body.string_value, r.time_unix_nano, r.event_name,
                            c.log_batches,
                        ))  # fmt: skip
        return logs_service_pb2.ExportLogsServiceResponse()


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.logs: list[LogRecord] = []
        self.log_batches = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self.port = 0

    def Export(self, request: Any, context: Any) -> Any:
        with self._lock:
            for rs in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        self.spans.append(Span(
                            attrs.get("service.name", ""), s.name, s.trace_id.hex(),
                            s.span_id.hex(), s.parent_span_id.hex(),
                        ))  # fmt: skip
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self, port: int) -> None:
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)  # type: ignore[no-untyped-call]
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), self._server)  # type: ignore[no-untyped-call]
        self.port = self._server.add_insecure_port(f"127.0.0.1:{port}")
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait()
            self._server = None

    def received_logs(self) -> list[LogRecord]:
        with self._lock:
            return list(self.logs)

    def of_trace(self, trace_id: str) -> list[Span]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]


def main() -> None:
    """``python -m tests.otlp_collector --port P``: serve until SIGTERM (the sink the
    benchmarks ship audit records to, in a process of its own)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    stop = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # before the server's threads start
    collector = Collector()
    collector.start(args.port)
    print(f"collector on 127.0.0.1:{collector.port}", flush=True)
    signal.sigwait(stop)
    print(f"received {len(collector.logs)} log records, {len(collector.spans)} spans", flush=True)
    collector.stop()


if __name__ == "__main__":
    main()
