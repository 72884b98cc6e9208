"""What a flip would change for callers: the sample requests of ``router.core.samples``
routed under the current cluster view and under the hypothetical one, compared. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from router.core.model import ClusterView, RoutingTable
from router.core.samples import describe, view_changes


@dataclass(frozen=True, slots=True)
class RouteChange:
    requests: str
    before: str
    after: str


@dataclass(frozen=True, slots=True)
class Impact:
    changes: tuple[RouteChange, ...]
    leaving_cluster: str
    # Running workflows on the cluster being left, from its visibility; None if the
    # cluster could not be asked (then ``running_error`` says why).
    running: int | None
    running_error: str


def route_changes(
    table: RoutingTable, before: ClusterView, after: ClusterView
) -> tuple[RouteChange, ...]:
    """Each request class that would route differently, in words (what the dry run
    shows an SRE)."""
    return tuple(
        RouteChange(c.requests, describe(c.before), describe(c.after, c.before))
        for c in view_changes(table, before, after)
    )
