"""Package boundaries the design depends on, checked by parsing imports, and the
benchmarks' plumbing (run tiny, so they cannot rot; their numbers are not asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_core_purity import ROOT, imports_of

REGION_MODULES = sorted((ROOT / "regions").glob("*.py"))


@pytest.mark.parametrize("path", REGION_MODULES, ids=lambda p: p.name)
def test_regions_import_only_the_codec_and_errors_from_router(path: Path) -> None:
    from_router = {n for n in imports_of(path) if n == "router" or n.startswith("router.")}
    allowed = {n for n in from_router if n.startswith("router.codec") or n == "router.errors"}
    bad = from_router - allowed
    assert not bad, (
        f"{path.name} imports {sorted(bad)}: regions/ may use router.codec and router.errors"
    )


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

    out = await records_per_second(tmp_path, 4, 40)
    assert out["records_per_s"] > 0 and out["append_p50_ms"] > 0
    from router.audit import verify

    assert verify([tmp_path]).records == 40


def test_core_benchmark_runs() -> None:
    from benchmarks.core import requests, run

    assert len({(r.user_country, r.data_class) for r in requests(500)}) > 20, "a real mix"
    result = run(0.05, 1, sizes=False)
    assert result["decisions_per_s"] > 0


def _router_modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "router").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if not name.startswith("router.v1"):
            out[name] = path
    return out


def _edges(path: Path, modules: dict[str, Path]) -> set[str]:
    """The router modules ``path`` imports; ``from pkg import sub`` is an edge to the
    submodule (as Python resolves it), not to the package's ``__init__``."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in modules:
                    out.add(sub)
                elif node.module in modules:
                    out.add(node.module)
    return out


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return cycles


def test_router_modules_import_no_cycle() -> None:
    """No import cycle among router's modules, TYPE_CHECKING imports included: each
    layer (core, config, adapters, services, api, cli) only imports the ones below it."""
    modules = _router_modules()
    graph = {name: _edges(path, modules) - {name} for name, path in modules.items()}
    assert import_cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
