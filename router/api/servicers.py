"""gRPC servicers: proto <-> service calls, and errors -> status codes (router.api.status).

Nothing here decides anything; it converts, calls the router's services (``Starter``,
``Followups``, ``Admin``) and reports. Every
handler answers a MeridianError with its mapped status and message, and anything
unexpected with INTERNAL and a generic message (the details go to the log, never to
the caller), so a bad request never takes the service down.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from router import metrics, telemetry
from router.admin import Admin
from router.api.auth import PRINCIPAL
from router.api.status import abort, status_of
from router.api.values import args_to_python, from_python
from router.audit import Receipt
from router.audit.checkpoint import CheckpointStatus, ReceiptSigner
from router.core.authz import AuthMethod, Principal
from router.core.failover import RegionState
from router.core.model import DataClass, Decision, Priority, Role, WorkflowStatus
from router.errors import InvalidArgument, MeridianError
from router.followups import Followups, Ref
from router.starts import Starter, StartInput
from router.temporal.gateway import WorkflowInfo
from router.temporal.locator import Location
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)
# One line per start (text, or JSON with --log-format json): who, where, why; never
# arguments or secrets.
decisions_log = logging.getLogger("meridian.decisions")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]

_DATA_CLASS: dict[int, DataClass] = {
    pb.PUBLIC: DataClass.PUBLIC,
    pb.INTERNAL: DataClass.INTERNAL,
    pb.PII: DataClass.PII,
    pb.FINANCIAL: DataClass.FINANCIAL,
}
_DATA_CLASS_PB: dict[DataClass, Any] = {v: k for k, v in _DATA_CLASS.items()}
_PRIORITY: dict[int, Priority] = {
    pb.PRIORITY_UNSPECIFIED: Priority.NORMAL,
    pb.LOW: Priority.LOW,
    pb.NORMAL: Priority.NORMAL,
    pb.HIGH: Priority.HIGH,
}
_STATUS: dict[WorkflowStatus | None, Any] = {
    WorkflowStatus.RUNNING: pb.RUNNING,
    WorkflowStatus.COMPLETED: pb.COMPLETED,
    WorkflowStatus.FAILED: pb.FAILED,
    WorkflowStatus.CANCELED: pb.CANCELED,
    WorkflowStatus.TERMINATED: pb.TERMINATED,
    WorkflowStatus.CONTINUED_AS_NEW: pb.CONTINUED_AS_NEW,
    WorkflowStatus.TIMED_OUT: pb.TIMED_OUT,
}


def handler(fn: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Errors to status codes; and, for every RPC but StartWorkflow (which records its
    own decision metrics), its latency by status."""
    timed = fn.__name__ != "StartWorkflow"

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext) -> Resp:
        t0 = time.perf_counter()
        code = "OK"
        try:
            return await fn(self, request, context)
        except MeridianError as exc:
            code = status_of(exc).name
            await abort(context, exc)
        except Exception:
            code = "INTERNAL"
            log.exception("unexpected error in %s", fn.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, "internal error in Meridian; the router logged it"
            )
        finally:
            if timed:
                metrics.followup_duration.record(
                    time.perf_counter() - t0, {"rpc": fn.__name__, "code": code}
                )
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def _data_class(value: int) -> DataClass | None:
    if value == pb.DATA_CLASS_UNSPECIFIED:
        return None
    try:
        return _DATA_CLASS[value]
    except KeyError:
        raise InvalidArgument(
            field="data_class", reason=f"{value} is not a DataClass value"
        ) from None


def _priority(value: int) -> Priority:
    try:
        return _PRIORITY[value]
    except KeyError:
        raise InvalidArgument(field="priority", reason=f"{value} is not a Priority value") from None


def start_input(request: pb.StartWorkflowRequest) -> StartInput:
    return StartInput(
        workflow_type=request.workflow_type,
        workflow_id=request.workflow_id,
        args=args_to_python("args", request.args),
        args_size=sum(a.ByteSize() for a in request.args),
        tenant_id=request.tenant_id,
        user_country=request.user_country,
        user_subdivision=request.user_subdivision,
        data_class=_data_class(request.data_class),
        priority=_priority(request.priority),
        request_id=request.request_id,
    )


def decision_pb(d: Decision, out: pb.RouteDecision | None = None) -> pb.RouteDecision:
    msg = pb.RouteDecision() if out is None else out
    msg.zone = d.zone
    msg.region = d.region
    msg.cluster = d.cluster
    msg.namespace = d.namespace
    msg.task_queue = d.task_queue
    msg.rule = d.rule
    msg.reasons.extend(d.reasons)
    msg.config_version = d.config_version
    msg.failed_over = d.failed_over
    msg.endpoint = d.endpoint
    return msg


def _ref(ref: pb.WorkflowRef) -> Ref:
    return Ref(
        workflow_id=ref.workflow_id,
        run_id=ref.run_id,
        tenant_id=ref.tenant_id,
        home=ref.home,
        user_country=ref.user_country,
        user_subdivision=ref.user_subdivision,
        data_class=_data_class(ref.data_class),
    )


def _location(loc: Location, out: pb.WorkflowLocation) -> None:
    out.zone, out.region, out.cluster, out.namespace = (
        loc.zone, loc.region, loc.cluster, loc.namespace,
    )  # fmt: skip


def _timestamp(value: datetime | None, out: Timestamp) -> None:
    if value is not None:
        out.FromDatetime(value)


def _receipt(receipt: Receipt | None, out: Any, signer: ReceiptSigner | None = None) -> None:
    if receipt is not None:
        out.receipt.sequence, out.receipt.hash, out.receipt.file = (
            receipt.sequence, receipt.hash, receipt.file,
        )  # fmt: skip
        if signer is not None:
            signed = signer.sign(receipt)
            out.receipt.chain_id, out.receipt.key_id, out.receipt.signature = (
                signed.chain_id, signed.key_id, signed.signature,
            )  # fmt: skip


def _trace_id(context: grpc.aio.ServicerContext) -> str:
    """The W3C trace id of the request: the current span's, else (tracing off) the one
    the caller's traceparent header carries, if any."""
    trace_id = telemetry.current_trace_id()
    if not trace_id:
        meta = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        parts = meta.get("traceparent", "").split("-")
        trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""
    return trace_id


def _remaining(context: grpc.aio.ServicerContext) -> float | None:
    remaining: float | None = context.time_remaining()
    return remaining


class WorkflowRouterServicer(pb_grpc.WorkflowRouterServicer):
    def __init__(
        self, starts: Starter, followups: Followups, receipts: ReceiptSigner | None = None
    ) -> None:
        """``receipts``: signs the receipt each start (and explain) returns."""
        self._starts = starts
        self._followups = followups
        self._receipts = receipts

    def _location(self, workflow_id: str, loc: Location, out: pb.WorkflowLocation) -> None:
        _location(loc, out)
        out.home = self._followups.home_of(workflow_id, loc)

    @handler
    async def StartWorkflow(
        self, request: pb.StartWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.StartWorkflowResponse:
        t0 = time.perf_counter()
        data_class = (
            pb.DataClass.Name(request.data_class).lower()
            if request.data_class in (pb.PUBLIC, pb.INTERNAL, pb.PII, pb.FINANCIAL)
            else ""
        )
        try:
            res = await self._starts.start(
                start_input(request),
                remaining=_remaining(context),
                principal=PRINCIPAL.get(),
                trace_id=_trace_id(context),
            )
        except MeridianError as exc:
            outcome = metrics.outcome_of(exc)
            metrics.record_start(
                outcome, data_class=data_class,
                seconds=time.perf_counter() - t0, zone=getattr(exc, "zone", None) or "",
                message=exc.message,
            )  # fmt: skip
            decisions_log.info("start %s: %s", outcome, exc.message, extra={"fields": {
                "event": "start", "outcome": outcome, "request_id": request.request_id,
                "principal": PRINCIPAL.get().name, "workflow_id": request.workflow_id,
                "data_class": data_class,
            }})  # fmt: skip
            raise
        d = res.decision
        outcome = "started" if res.started else "duplicate"
        metrics.record_start(
            outcome, data_class=data_class,
            seconds=time.perf_counter() - t0, zone=d.zone, region=d.region, cluster=d.cluster,
            rule=d.rule, temporal_seconds=res.temporal_seconds,
        )  # fmt: skip
        decisions_log.info(
            "start %s: %s on %s (%s, rule %s)", outcome, res.workflow_id, d.cluster, d.region,
            d.rule, extra={"fields": {
                "event": "start", "outcome": outcome, "request_id": res.request_id,
                "principal": PRINCIPAL.get().name, "workflow_id": res.workflow_id,
                "zone": d.zone, "region": d.region, "cluster": d.cluster, "rule": d.rule,
                "data_class": data_class, "config_version": d.config_version,
            }},
        )  # fmt: skip
        resp = pb.StartWorkflowResponse(
            workflow_id=res.workflow_id,
            run_id=res.run_id,
            started=res.started,
            request_id=res.request_id,
            home=self._followups.home_of(
                res.workflow_id,
                Location(d.cluster, d.namespace, d.region, d.zone, request.tenant_id),
            ),
        )
        decision_pb(res.decision, resp.decision)
        # One signature per start (~41 µs): the outcome's. The decision's receipt stays an
        # unsigned pointer; the signed start.outcome record names the decision record.
        _receipt(res.decision_receipt, resp.decision)
        _receipt(res.receipt, resp, self._receipts)
        return resp

    @handler
    async def ExplainRoute(
        self, request: pb.StartWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.RouteDecision:
        decision, receipt = await self._starts.explain(
            start_input(request), principal=PRINCIPAL.get(), trace_id=_trace_id(context)
        )
        out = decision_pb(decision)
        _receipt(receipt, out, self._receipts)
        return out

    @handler
    async def DescribeWorkflow(
        self, request: pb.WorkflowRef, context: grpc.aio.ServicerContext
    ) -> pb.DescribeWorkflowResponse:
        loc, info = await self._followups.describe(_ref(request), remaining=_remaining(context))
        resp = describe_pb(loc, info)
        self._location(info.workflow_id, loc, resp.location)
        return resp

    @handler
    async def SignalWorkflow(
        self, request: pb.SignalWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.SignalWorkflowResponse:
        loc = await self._followups.signal(
            _ref(request.ref),
            request.signal_name,
            args_to_python("args", request.args),
            sum(a.ByteSize() for a in request.args),
            remaining=_remaining(context),
        )
        resp = pb.SignalWorkflowResponse()
        self._location(request.ref.workflow_id, loc, resp.location)
        return resp

    @handler
    async def QueryWorkflow(
        self, request: pb.QueryWorkflowRequest, context: grpc.aio.ServicerContext
    ) -> pb.QueryWorkflowResponse:
        loc, value = await self._followups.query(
            _ref(request.ref),
            request.query_name,
            args_to_python("args", request.args),
            sum(a.ByteSize() for a in request.args),
            remaining=_remaining(context),
        )
        resp = pb.QueryWorkflowResponse()
        _result_value(value, resp.result, "query result")
        self._location(request.ref.workflow_id, loc, resp.location)
        return resp

    @handler
    async def CancelWorkflow(
        self, request: pb.WorkflowRef, context: grpc.aio.ServicerContext
    ) -> pb.CancelWorkflowResponse:
        loc = await self._followups.cancel(_ref(request), remaining=_remaining(context))
        resp = pb.CancelWorkflowResponse()
        self._location(request.workflow_id, loc, resp.location)
        return resp

    @handler
    async def GetWorkflowResult(
        self, request: pb.WorkflowRef, context: grpc.aio.ServicerContext
    ) -> pb.WorkflowResult:
        loc, info, outcome = await self._followups.result(
            _ref(request), remaining=_remaining(context)
        )
        resp = pb.WorkflowResult(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            status=_STATUS.get(outcome.status, pb.WORKFLOW_STATUS_UNSPECIFIED),
            failure=outcome.failure,
        )
        if outcome.status is WorkflowStatus.COMPLETED:
            _result_value(outcome.result, resp.result, "workflow result")
        self._location(request.workflow_id, loc, resp.location)
        return resp


def _result_value(value: Any, out: Any, what: str) -> None:
    try:
        from_python(value, out)
    except TypeError as exc:
        raise MeridianError(f"the {what} is not JSON-shaped: {exc}") from exc


def describe_pb(loc: Location, info: WorkflowInfo) -> pb.DescribeWorkflowResponse:
    resp = pb.DescribeWorkflowResponse(
        workflow_id=info.workflow_id,
        run_id=info.run_id,
        workflow_type=info.workflow_type,
        status=_STATUS.get(info.status, pb.WORKFLOW_STATUS_UNSPECIFIED),
        task_queue=info.task_queue,
        history_length=info.history_length,
        tenant_id=loc.tenant_id,
    )
    if info.memo is not None:
        resp.data_class = _DATA_CLASS_PB[info.memo.data_class]
    _timestamp(info.start_time, resp.start_time)
    _timestamp(info.close_time, resp.close_time)
    return resp


class RoutingAdminServicer(pb_grpc.RoutingAdminServicer):
    def __init__(self, admin: Admin) -> None:
        self._admin = admin

    @handler
    async def GetTopology(
        self, request: pb.GetTopologyRequest, context: grpc.aio.ServicerContext
    ) -> pb.Topology:
        return topology_pb(self._admin)

    @handler
    async def SetActiveCluster(
        self, request: pb.SetActiveClusterRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetActiveClusterResponse:
        principal = PRINCIPAL.get()
        on_behalf_of = request.actor
        if principal.method is AuthMethod.NONE:
            # Auth off: the free-text actor is all there is (as before auth existed).
            name = request.actor or f"anonymous@{context.peer()}"
            principal, on_behalf_of = Principal(name[:256], AuthMethod.NONE), ""
        out = await self._admin.set_active_cluster(
            region=request.region,
            cluster=request.cluster,
            reason=request.reason,
            force=request.force,
            dry_run=request.dry_run,
            actor=principal,
            on_behalf_of=on_behalf_of[:256],
            remaining=_remaining(context),
        )
        resp = pb.SetActiveClusterResponse(
            changed=out.after.active != out.before.active and not out.dry_run,
            dry_run=out.dry_run,
            refused_rule=out.refused_rule,
            refused_message=out.refused_message,
        )
        region_pb(self._admin, out.before, resp.before)
        region_pb(self._admin, out.after, resp.after)
        if out.impact is not None:
            imp = out.impact
            resp.impact.leaving_cluster = imp.leaving_cluster
            resp.impact.running_workflows_known = imp.running is not None
            resp.impact.running_workflows = imp.running or 0
            resp.impact.running_workflows_error = imp.running_error
            for change in imp.changes:
                resp.impact.route_changes.add(
                    requests=change.requests, before=change.before, after=change.after
                )
        return resp


def region_pb(m: Admin, state: RegionState, out: pb.Region) -> None:
    """One region as the status view shows it: clusters with role, health and which is
    active in ``state`` (the live state, or a before/after of a flip)."""
    table = m.config.table
    region = table.regions[state.region]
    probes = m.probes
    out.name, out.zone = region.name, region.zone
    out.codec_server = region.codec_server or ""
    out.mode = state.policy.mode.value
    out.failed_over = state.failed_over
    if state.last_flip is not None:
        f = state.last_flip
        out.last_flip.time.FromNanoseconds(int(f.at * 1e9))
        out.last_flip.from_cluster, out.last_flip.to_cluster = f.from_cluster, f.to_cluster
        out.last_flip.actor, out.last_flip.reason, out.last_flip.rule = f.actor, f.reason, f.rule
        out.last_flip.automatic, out.last_flip.forced = f.automatic, f.forced
        out.last_flip.on_behalf_of = f.on_behalf_of
    for c in region.clusters:
        probe = probes.get(c.name)
        out.clusters.add(
            name=c.name,
            endpoint=c.endpoint,
            namespaces=list(c.namespaces),
            role=pb.PRIMARY if c.role is Role.PRIMARY else pb.STANDBY,
            healthy=bool(probe and probe.healthy),
            active=c.name == state.active,
            last_error=probe.last_error if probe else "",
            probed=probe is not None and probe.healthy is not None,
        )


def topology_pb(m: Admin) -> pb.Topology:
    table = m.config.table
    topo = pb.Topology(config_version=table.version, default_region=table.default_region)
    for zone in table.zones.values():
        topo.zones.add(
            name=zone.name, countries=sorted(zone.countries), home_region=zone.home_region
        )
    for name in table.regions:
        region_pb(m, m.states[name], topo.regions.add())
    topo.config_source = m.config.source
    live = m.live()
    if live is not None:
        topo.replica_id, topo.leader, topo.is_leader = live.replica_id, live.leader, live.is_leader
        topo.consul, topo.consul_reachable = live.consul, live.consul_reachable
    else:
        topo.replica_id = topo.leader = "local"
        topo.is_leader = True
    topo.config_pending = m.config_pending
    checkpoints = m.checkpoints()
    if checkpoints is not None:
        _checkpoints_pb(checkpoints, topo.audit_checkpoints)
    if m.shipping is not None:
        ship = m.shipping()
        out = topo.audit_shipping
        out.sink, out.chain, out.last_error = ship.sink, ship.chain, ship.last_error
        out.committed_seq, out.shipped_seq, out.lag = ship.committed_seq, ship.shipped_seq, ship.lag
        if ship.last_shipped_at is not None:
            out.last_shipped.FromNanoseconds(int(ship.last_shipped_at * 1e9))
    if m.last_rejected is not None:
        at, error = m.last_rejected
        topo.last_rejected.time.FromNanoseconds(int(at * 1e9))
        topo.last_rejected.source = error.source
        topo.last_rejected.errors.extend(str(e) for e in error.errors)
    return topo


def _checkpoints_pb(c: CheckpointStatus, out: pb.AuditCheckpoints) -> None:
    out.chain_id, out.key_id, out.interval_seconds = c.chain_id, c.key_id, c.interval
    out.log_seq, out.checkpoint_seq = c.log_seq, c.checkpoint_seq
    if c.checkpoint_time is not None:
        out.checkpoint_time.FromNanoseconds(int(c.checkpoint_time * 1e9))
    for w in c.witnesses:
        item = out.witnesses.add(
            name=w.name, published_seq=w.published_seq, last_error=w.last_error,
            failures=w.failures,
        )  # fmt: skip
        if w.last_published is not None:
            item.last_published.FromNanoseconds(int(w.last_published * 1e9))
