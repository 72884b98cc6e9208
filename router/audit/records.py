"""Audit events of the core as JSON-shaped records (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from router.core.failover import AuditEvent, FlipDone


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _health(health: Any) -> dict[str, str]:
    return {
        c: ("healthy" if h else "unknown" if h is None else "unhealthy") for c, h in health.items()
    }


def flip_record(event: AuditEvent) -> dict[str, Any]:
    if isinstance(event, FlipDone):
        f = event.flip
        return {
            "kind": "flip",
            "outcome": "done",
            "time": utc(f.at),
            "region": event.region,
            "zone": event.zone,
            "from_cluster": f.from_cluster,
            "to_cluster": f.to_cluster,
            "actor": f.actor,
            "reason": f.reason,
            "rule": f.rule,
            "automatic": f.automatic,
            "forced": f.forced,
            "health": _health(event.health),
        }
    return {
        "kind": "flip",
        "outcome": "refused",
        "time": utc(event.at),
        "region": event.region,
        "zone": event.zone,
        "to_cluster": event.target,
        "actor": event.actor,
        "reason": event.reason,
        "rule": event.rule,
        "message": event.message,
        "automatic": event.automatic,
        "forced": event.forced,
        "health": _health(event.health),
    }
