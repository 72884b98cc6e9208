"""What would change between two configs: the documents key by key (dotted paths), and
where representative requests would route, so an SRE sees the effect, not just text."""

from __future__ import annotations

from typing import Any

from router.config.compile import format_loc
from router.config.settings import ResolvedConfig
from router.core.impact import RouteChange, representative_requests
from router.core.model import ClusterView, Decision, RoutingTable
from router.core.policy import route


def document_changes(old: Any, new: Any, path: tuple[str | int, ...] = ()) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            here = (*path, key)
            if key not in new:
                out.append(f"- {format_loc(here)}: {old[key]!r}")
            elif key not in old:
                out.append(f"+ {format_loc(here)}: {new[key]!r}")
            else:
                out += document_changes(old[key], new[key], here)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new, strict=True))
                for c in document_changes(a, b, (*path, i))]  # fmt: skip
    return [] if old == new else [f"~ {format_loc(path)}: {old!r} -> {new!r}"]


def _where(table: RoutingTable, label: str, req: Any) -> str:
    if req.user_country not in table.known_countries:
        return "-"
    outcome = route(req, table, ClusterView.all_primaries_healthy(table), any_workflow_type=True)
    if isinstance(outcome, Decision):
        return f"{outcome.cluster} ({outcome.region}, rule {outcome.rule})"
    return f"refused: {outcome.kind.value}"


def route_changes(old: RoutingTable, new: RoutingTable) -> list[RouteChange]:
    """Representative requests of both configs, routed with every primary healthy."""
    seen: dict[str, Any] = {}
    for label, req in [*representative_requests(old), *representative_requests(new)]:
        seen.setdefault(label, req)
    out = []
    for label, req in seen.items():
        was, will = _where(old, label, req), _where(new, label, req)
        if was != will:
            out.append(RouteChange(label, was, will))
    return out


def diff(old: ResolvedConfig, new: ResolvedConfig) -> tuple[list[str], list[RouteChange]]:
    return (
        document_changes(
            old.document.model_dump(mode="json"), new.document.model_dump(mode="json")
        ),
        route_changes(old.table, new.table),
    )
