"""Deadlines: every call to a cluster is bounded by the config's limit and by what is
left of the caller's gRPC deadline, minus a margin for the router's own work after it."""

from __future__ import annotations

from router.errors import DeadlineExceeded

# Left for the router's own work after the Temporal call, out of the caller's deadline.
MARGIN = 0.005


def budget(remaining: float | None, limit: float) -> float:
    """Seconds a call may take: ``limit``, or less when the caller has less left."""
    if remaining is None:
        return limit
    if remaining <= MARGIN:
        raise DeadlineExceeded("the caller's deadline passed before Meridian could act")
    return min(limit, remaining - MARGIN)
