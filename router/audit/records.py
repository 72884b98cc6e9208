"""Audit records as JSON-shaped dicts (no I/O). What goes in, and what never does:
routing inputs down to the user's country and subdivision, where the data went and why,
key ids; never workflow arguments, results, keys or tokens."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from router.codec.keys import RingChange
from router.core.authz import Principal
from router.core.failover import AuditEvent, FlipDone
from router.core.model import Decision, Refusal, RouteRequest, RoutingTable


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class CallContext:
    """Who asked (as authenticated), and the trace it belongs to."""

    principal: Principal
    request_id: str
    trace_id: str = ""

    def who(self) -> dict[str, str]:
        out = {"principal": self.principal.name, "auth": self.principal.method.value}
        if self.principal.peer_identity:
            out["peer_identity"] = self.principal.peer_identity
        return out


def _inputs(req: RouteRequest, ctx: CallContext, workflow_id: str) -> dict[str, Any]:
    return {
        "request_id": ctx.request_id,
        **ctx.who(),
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
        **ctx.who(),
        "workflow_id": workflow_id,
        "decision_seq": decision_seq,
        "cluster": cluster,
        "outcome": "error" if error else ("started" if started else "existing"),
        "run_id": run_id,
        "error": error,
        "retried_from": retried_from,
    }


def config_record(
    *,
    outcome: str,
    source: str,
    version: str,
    previous: str = "",
    errors: list[str] | None = None,
    table: RoutingTable | None = None,
) -> dict[str, Any]:
    """``table``: the config going into force (loaded, accepted); its topology goes into
    the record, so a report can re-derive each decision's zone from its region under
    the version in force instead of trusting the decision's own fields."""
    record: dict[str, Any] = {
        "kind": "config.change",
        "outcome": outcome,
        "source": source,
        "version": version,
        "previous_version": previous,
        "errors": errors or [],
    }
    if table is not None:
        topo = topology(table)
        record["topology"] = topo
        record["topology_hash"] = topology_hash(topo)
    return record


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


def access_record(
    *,
    kind: str,
    who: str,
    auth: str,
    count: int,
    rpcs: dict[str, int],
    reasons: dict[str, int],
    aggregated: bool,
    since: float | None = None,
) -> dict[str, Any]:
    """A refused caller at the router's gRPC edge: ``auth.failure`` (no principal: ``who``
    is the peer's address) or ``auth.denied`` (``who`` is the principal). ``count``
    callers were refused; an aggregated record counts those after the first of its
    interval (``since``: when the interval began)."""
    record: dict[str, Any] = {
        "kind": kind,
        "component": "router",
        "principal" if kind == "auth.denied" else "peer": who,
        "auth": auth,
        "count": count,
        "rpcs": rpcs,
        "reasons": reasons,
        "aggregated": aggregated,
    }
    if since is not None:
        record["since"] = utc(since)
    return record


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
            "auth": f.auth,
            "on_behalf_of": f.on_behalf_of,
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
        "auth": event.auth,
        "on_behalf_of": event.on_behalf_of,
        "reason": event.reason,
        "rule": event.rule,
        "message": event.message,
        "automatic": event.automatic,
        "forced": event.forced,
        "health": _health(event.health),
    }


def checkpoint_record(
    *,
    chain_id: str,
    replica_id: str,
    checkpoint_seq: int,
    checkpoint_hash: str,
    checkpoint_time: str,
    digest: str,
    key_id: str,
    witnesses: dict[str, str],
) -> dict[str, Any]:
    """A signed checkpoint of this chain was made and published: what it covers, and each
    witness's outcome ("published" or "failed: why")."""
    return {
        "kind": "audit.checkpoint",
        "chain_id": chain_id,
        "replica_id": replica_id,
        "checkpoint_seq": checkpoint_seq,
        "checkpoint_hash": checkpoint_hash,
        "checkpoint_time": checkpoint_time,
        "checkpoint_digest": digest,
        "key_id": key_id,
        "witnesses": witnesses,
    }


def witness_record(
    *, chain_id: str, witness: str, outcome: str, checkpoint_seq: int, failures: int
) -> dict[str, Any]:
    """A witness that had failed took the latest checkpoint (``outcome`` "recovered")."""
    return {
        "kind": "audit.witness",
        "chain_id": chain_id,
        "witness": witness,
        "outcome": outcome,
        "checkpoint_seq": checkpoint_seq,
        "failures": failures,
    }


def topology(table: RoutingTable) -> dict[str, Any]:
    """What residency depends on, as plain data: each zone's countries and regions, each
    region's zone and clusters, and the tenants that declare a residency zone."""
    return {
        "zones": {
            z.name: {"countries": sorted(z.countries), "regions": list(z.regions)}
            for z in table.zones.values()
        },
        "regions": {
            r.name: {"zone": r.zone, "clusters": [c.name for c in r.clusters]}
            for r in table.regions.values()
        },
        "tenants": {
            t.name: t.residency_zone for t in table.tenants.values() if t.residency_zone is not None
        },
    }


def topology_hash(topo: dict[str, Any]) -> str:
    """SHA-256 of the topology's canonical JSON (sorted keys, no spaces)."""
    text = json.dumps(topo, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def key_rotation_record(change: RingChange, *, component: str, **who: str) -> dict[str, Any]:
    """A region's active key changed (``key.rotation``) or only its set of keys did
    (``key.ring``), as noticed by ``component`` (the router's or a codec server's ring
    refresh, or ``meridian keys rotate``). Key ids only, never key material. ``who``:
    more about the noticer (e.g. ``os_user`` for the CLI)."""
    return {
        "kind": "key.rotation" if change.active != change.previous_active else "key.ring",
        "component": component,
        "region": change.region,
        "previous_key_id": change.previous_active,
        "key_id": change.active,
        "key_ids_added": list(change.added),
        "key_ids_removed": list(change.removed),
        **who,
    }
