"""router/core must stay pure: no I/O, no clock, no randomness, no asyncio.

Parses the imports of every module in router/core (and router/errors, which the core
uses) and fails on anything outside the allowed set, so a stray `import time` is caught
in review rather than in a flaky benchmark.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "__future__",
    "collections",
    "collections.abc",
    "dataclasses",
    "enum",
    "fnmatch",
    "functools",
    "heapq",
    "itertools",
    "types",
    "typing",
    "router.errors",
}
PURE_MODULES = [*sorted((ROOT / "router" / "core").glob("*.py")), ROOT / "router" / "errors.py"]


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: relative import; use absolute router.core.*")
            names.add(node.module or "")
    return names


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: p.name)
def test_pure_module_imports_only_pure_modules(path: Path) -> None:
    bad = {n for n in imports_of(path) if n not in ALLOWED and not n.startswith("router.core")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}; router/core must stay pure"


def test_the_check_catches_an_impure_import(tmp_path: Path) -> None:
    sample = tmp_path / "impure.py"
    sample.write_text(
        "import time\nfrom asyncio import sleep\nfrom router.core.model import Rule\n"
    )
    assert imports_of(sample) - ALLOWED == {"time", "asyncio", "router.core.model"}


def test_there_are_core_modules_to_check() -> None:
    assert {p.name for p in PURE_MODULES} >= {"policy.py", "model.py", "validate.py", "health.py"}
