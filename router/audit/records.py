"""Audit records as JSON-shaped dicts (no I/O). What goes in, and what never does:
routing inputs down to the user's country and subdivision, where the data went and why,
key ids; never workflow arguments, results, keys or tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from router.core.failover import AuditEvent, FlipDone
from router.core.model import Decision, Refusal, RouteRequest


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who asked, and the trace it belongs to."""

    caller: str
    request_id: str
    trace_id: str = ""


def _inputs(req: RouteRequest, ctx: CallContext, workflow_id: str) -> dict[str, Any]:
    return {
        "request_id": ctx.request_id,
        "caller": ctx.caller,
        "trace_id": ctx.trace_id,
        "workflow_type": req.workflow_type,
        "workflow_id": workflow_id,
        "tenant": req.tenant_id,
        "user_country": req.user_country,
        "user_subdivision": req.user_subdivision or "",
        "data_class": req.data_class.value,
        "priority": req.priority.value,
    }


def decision_record(
    kind: str, req: RouteRequest, d: Decision, ctx: CallContext, *, workflow_id: str, key_id: str
) -> dict[str, Any]:
    """``kind``: route.decision (a start about to be sent) or route.explain (a dry run)."""
    return {
        "kind": kind,
        **_inputs(req, ctx, workflow_id),
        "zone": d.zone,
        "residency_zone": d.residency_zone or "",
        "region": d.region,
        "cluster": d.cluster,
        "namespace": d.namespace,
        "task_queue": d.task_queue,
        "rule": d.rule,
        "reasons": list(d.reasons),
        "config_version": d.config_version,
        "encryption_key_id": key_id,
        "failed_over": d.failed_over,
    }


def refusal_record(
    req: RouteRequest, r: Refusal, ctx: CallContext, *, workflow_id: str
) -> dict[str, Any]:
    return {
        "kind": "route.refusal",
        **_inputs(req, ctx, workflow_id),
        "refusal": r.kind.value,
        "message": r.message,
        "reasons": list(r.reasons),
        "residency_zone": r.residency_zone or "",
        "config_version": r.config_version,
    }


def outcome_record(
    *,
    ctx: CallContext,
    workflow_id: str,
    decision_seq: int,
    cluster: str,
    run_id: str = "",
    started: bool = False,
    error: str = "",
    retried_from: str = "",
) -> dict[str, Any]:
    return {
        "kind": "start.outcome",
        "request_id": ctx.request_id,
        "workflow_id": workflow_id,
        "decision_seq": decision_seq,
        "cluster": cluster,
        "outcome": "error" if error else ("started" if started else "existing"),
        "run_id": run_id,
        "error": error,
        "retried_from": retried_from,
    }


def config_record(
    *, outcome: str, source: str, version: str, previous: str = "", errors: list[str] | None = None
) -> dict[str, Any]:
    return {
        "kind": "config.change",
        "outcome": outcome,
        "source": source,
        "version": version,
        "previous_version": previous,
        "errors": errors or [],
    }


def auth_failure_record(
    *, component: str, region: str, remote: str, path: str, why: str
) -> dict[str, Any]:
    return {
        "kind": "auth.failure",
        "component": component,
        "region": region,
        "remote": remote,
        "path": path,
        "why": why,
    }


def _health(health: Any) -> dict[str, str]:
    return {
        c: ("healthy" if h else "unknown" if h is None else "unhealthy") for c, h in health.items()
    }


def flip_record(event: AuditEvent) -> dict[str, Any]:
    if isinstance(event, FlipDone):
        f = event.flip
        return {
            "kind": "flip",
            # "adopted": decided by another replica, followed here through Consul.
            "outcome": "adopted" if event.adopted else "done",
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
