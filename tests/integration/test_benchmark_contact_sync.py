"""The contact_sync benchmark's plumbing, run tiny so it cannot rot (its numbers are
the benchmark's business, never asserted here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.contact_sync import run

pytestmark = pytest.mark.integration


async def test_contact_sync_benchmark_runs(tmp_path: Path) -> None:
    result = await run(300, 50, 2, tmp_path)
    assert result["counts"]["read"] == 300 and result["store_rows"] > 0
    assert result["runs"] == 3 and result["history_events"] > 0
    assert result["contacts_per_s"] > 0 and result["worker_peak_rss_mb"] > 0
