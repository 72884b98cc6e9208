"""JSON log lines: one object per line, the structured fields a call site passes, the
trace id when there is one, an exception as its type and message; nothing else."""

from __future__ import annotations

import json
import logging

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from router.logs import JsonFormatter


def line(record: logging.LogRecord) -> dict[str, object]:
    out: dict[str, object] = json.loads(JsonFormatter().format(record))
    return out


def test_a_decision_line_carries_its_fields() -> None:
    record = logging.LogRecord("meridian.decisions", logging.INFO, __file__, 1,
                               "start %s: %s", ("started", "wf-1"), None)  # fmt: skip
    record.fields = {"event": "start", "principal": "spiffe://x/acme", "region": "eu-west"}
    out = line(record)
    assert out["message"] == "start started: wf-1" and out["level"] == "info"
    assert (out["event"], out["principal"], out["region"]) == (
        "start",
        "spiffe://x/acme",
        "eu-west",
    )
    assert "trace_id" not in out, "no span, no trace id"


def test_the_trace_id_and_an_exception() -> None:
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("s") as span:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (),
                                       sys.exc_info())  # fmt: skip
        out = line(record)
        assert out["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert out["error"] == "ValueError: boom"
    assert "Traceback" not in json.dumps(out), "a line, not a stack trace"
    assert trace.get_current_span() is not None
