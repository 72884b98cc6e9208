"""Log lines: text for people, or one JSON object per line for log pipelines
(``--log-format json``, or ``MERIDIAN_LOG_FORMAT=json`` as the container image sets).

A JSON line carries the time, level, logger and message, the current trace id, and the
structured fields a call site passes in ``extra={"fields": {...}}`` (request id,
principal, the decision's summary). Call sites never pass payloads or secrets; the
formatter adds nothing but those fields and the exception's type and message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = _trace_id()
        if trace_id:
            line["trace_id"] = trace_id
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line["error"] = f"{type(exc).__name__}: {exc}"
        return json.dumps(line, ensure_ascii=False, default=str)


def _trace_id() -> str:
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def setup(*, verbose: bool, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    # Neither format shows the caller's file and line, thread or process: skip finding
    # them for every record (the logging HOWTO's "Optimization"; a decision line is
    # logged per start).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # temporalio's core logs every failed poll of a stopped cluster; keep warnings only.
    logging.getLogger("temporalio").setLevel(logging.WARNING)
