"""Shared benchmark helpers: A/B rounds, medians, tables and JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def rate(fn: Callable[[], object], n: int) -> float:
    """Operations per second of ``fn`` over ``n`` calls (one timing, process CPU clock
    excluded on purpose: wall time is what callers see)."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def ab_rounds(
    a: Callable[[], object], b: Callable[[], object], n: int, rounds: int
) -> tuple[float, float]:
    """Median ops/s of ``a`` and ``b``, measured alternately so drift hits both."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(rate(a, n))
        rb.append(rate(b, n))
    return statistics.median(ra), statistics.median(rb)


def start_request(prefix: str, *, country: str = "DE", tenant: str = "bench") -> Any:
    """A StartWorkflowRequest of the benchmarks' workload: EchoWorkflow, PII data, a
    fresh workflow id."""
    from router.v1 import router_pb2 as pb

    return pb.StartWorkflowRequest(
        workflow_type="EchoWorkflow", workflow_id=f"{prefix}-{uuid.uuid4()}", tenant_id=tenant,
        user_country=country, data_class=pb.PII,
    )  # fmt: skip


def progress(message: str) -> None:
    """A long run's progress, on stderr: stdout holds only the result (--json parses)."""
    print(message, file=sys.stderr, flush=True)


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    from router.cli import render_table

    return render_table(headers, rows)


def emit(result: dict[str, Any], as_json: bool, table: str) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(table)
