"""Package boundaries the design depends on, checked by parsing imports, and the
benchmarks' plumbing (run tiny, so they cannot rot; their numbers are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_core_purity import ROOT, imports_of

REGION_MODULES = sorted((ROOT / "regions").glob("*.py"))


@pytest.mark.parametrize("path", REGION_MODULES, ids=lambda p: p.name)
def test_regions_import_only_the_codec_from_router(path: Path) -> None:
    from_router = {n for n in imports_of(path) if n == "router" or n.startswith("router.")}
    bad = {n for n in from_router if not (n == "router.codec" or n.startswith("router.codec."))}
    assert not bad, f"{path.name} imports {sorted(bad)}: regions/ may use only router.codec"


def test_codec_package_does_not_reach_into_the_router() -> None:
    for path in sorted((ROOT / "router" / "codec").glob("*.py")):
        names = {n for n in imports_of(path) if n.startswith("router.")}
        allowed = {n for n in names if n.startswith("router.codec") or n == "router.errors"}
        assert names == allowed, f"{path.name} imports {sorted(names - allowed)}"


def test_codec_benchmark_runs() -> None:
    from benchmarks.codec import run

    result = run(rounds=1, budget=0.02)
    assert {(r["size"], r["op"]) for r in result["results"]} == {
        ("1KiB", "encode"),
        ("1KiB", "decode"),
        ("1MiB", "encode"),
        ("1MiB", "decode"),
    }
    assert all(r["codec_ops_s"] > 0 and r["raw_ops_s"] > 0 for r in result["results"])


async def test_audit_records_benchmark_runs(tmp_path: Path) -> None:
    from benchmarks.audit import records_per_second

    rate, p50 = await records_per_second(tmp_path, 4, 40)
    assert rate > 0 and p50 > 0
    from router.audit import verify

    assert verify([tmp_path]).records == 40


def test_core_benchmark_runs() -> None:
    from benchmarks.core import requests, run

    assert len({(r.user_country, r.data_class) for r in requests(500)}) > 20, "a real mix"
    result = run(0.05, 1)
    assert result["decisions_per_s"] > 0
