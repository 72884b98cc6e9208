"""Starting workflows: validate, route, audit, send, and the failover rule for starts in
flight. The order is the contract (DESIGN invariants 1-3):

1. the decision (or the refusal) is routed by the pure core and written to the audit
   log, fsynced, before anything is sent;
2. the start goes to the decided cluster, idempotent by workflow id;
3. a start the cluster refused before it was sent (connection refused) waits, within its
   deadline, for the view to route it elsewhere, and is sent once more there after a new
   decision is audited; a start that may have reached its cluster is never re-sent
   elsewhere: the caller is told it is safe to retry with the same id;
4. the outcome is audited before the caller hears of it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from router.audit import (
    AuditSink,
    CallContext,
    Receipt,
    decision_record,
    outcome_record,
    refusal_record,
)
from router.config.runtime import ConfigController
from router.core.authz import AuthMethod, Principal
from router.core.memo import WorkflowMemo
from router.core.model import (
    ClusterView,
    DataClass,
    Decision,
    Priority,
    Refusal,
    RefusalKind,
    RouteRequest,
    RoutingTable,
)
from router.core.policy import route
from router.core.validate import build_request, check_args_size, check_name, check_workflow_id
from router.deadlines import budget
from router.errors import (
    AuditUnavailable,
    ClusterUnavailable,
    DeadlineExceeded,
    MeridianError,
    NoHealthyTarget,
    ResidencyUnsatisfiable,
    WorkflowIdTaken,
    WorkflowTypeNotServed,
)
from router.temporal.gateway import Gateway, StartOutcome, Target
from router.temporal.locator import Location, LocationCache

log = logging.getLogger(__name__)

# Who a start made in-process (benchmarks, tests) acts as: no credentials were checked.
IN_PROCESS = Principal("in-process", AuthMethod.NONE)


@dataclass(frozen=True, slots=True)
class StartInput:
    workflow_type: str
    workflow_id: str
    args: Sequence[Any]
    args_size: int
    tenant_id: str
    user_country: str
    user_subdivision: str
    data_class: DataClass | None
    priority: Priority
    request_id: str


@dataclass(frozen=True, slots=True)
class StartResult:
    workflow_id: str
    run_id: str
    started: bool
    decision: Decision
    request_id: str
    # Audit receipts: the route.decision record, and the start.outcome record.
    decision_receipt: Receipt | None = None
    receipt: Receipt | None = None
    # Seconds spent in Temporal's StartWorkflowExecution (for the router-added latency).
    temporal_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class _Job:
    """One start's fixed inputs, shared by its attempts."""

    req: RouteRequest
    args: Sequence[Any]
    ctx: CallContext
    workflow_id: str
    # time.monotonic() by which the start must have been answered.
    deadline: float


@dataclass(frozen=True, slots=True)
class Attempt:
    """One decision a start was (or is about to be) sent on, and its audit receipt."""

    decision: Decision
    receipt: Receipt | None
    # The cluster that refused the previous attempt ("" on the first).
    retried_from: str = ""

    @property
    def seq(self) -> int:
        return self.receipt.sequence if self.receipt is not None else 0


@dataclass(frozen=True, slots=True)
class Sent:
    """How a start ended on the Temporal side: the last attempt and its outcome, or the
    error the caller gets."""

    attempt: Attempt
    outcome: StartOutcome | None = None
    error: MeridianError | None = None


class ClusterViews(Protocol):
    """What the start path needs of the cluster state (``router.clusters``)."""

    def routing(self) -> tuple[RoutingTable, ClusterView]: ...

    def failover_expected(self, region: str) -> bool: ...

    async def wait_change(self, timeout: float) -> bool: ...

    def nudge(self, cluster: str) -> None: ...


def raise_refusal(refusal: Refusal) -> NoReturn:
    if refusal.kind is RefusalKind.RESIDENCY:
        raise ResidencyUnsatisfiable(refusal.message, zone=refusal.residency_zone)
    if refusal.kind is RefusalKind.WORKFLOW_TYPE:
        raise WorkflowTypeNotServed(refusal.message, zone=refusal.residency_zone)
    raise NoHealthyTarget(refusal.message, zone=refusal.residency_zone)


class Starter:
    def __init__(
        self,
        config: ConfigController,
        clusters: ClusterViews,
        gateway: Gateway,
        audit: AuditSink,
        locations: LocationCache,
    ) -> None:
        self._config = config
        self._clusters = clusters
        self._gateway = gateway
        self._audit = audit
        self._locations = locations

    def _request(self, inp: StartInput) -> RouteRequest:
        table = self._config.config.table
        req = build_request(
            table,
            workflow_type=inp.workflow_type,
            tenant_id=inp.tenant_id,
            user_country=inp.user_country,
            user_subdivision=inp.user_subdivision,
            data_class=inp.data_class,
            priority=inp.priority,
        )
        check_workflow_id(inp.workflow_id, table, required=False)
        check_name(
            "request_id", inp.request_id, limit=table.limits.max_request_id_length, required=False
        )
        check_args_size("args", inp.args_size, table)
        return req

    def _route(self, req: RouteRequest) -> Decision | Refusal:
        table, view = self._clusters.routing()
        return route(req, table, view)

    def _flip_coming(self, outcome: Decision | Refusal) -> bool:
        """A refusal for want of a healthy cluster while a region the request may use
        has a flip to a healthy standby coming (this replica's, or the leader's)."""
        if not isinstance(outcome, Refusal) or outcome.kind is not RefusalKind.NO_HEALTHY_TARGET:
            return False
        table, _ = self._clusters.routing()
        zone = table.zones.get(outcome.residency_zone or "")
        regions = zone.regions if zone is not None else tuple(table.regions)
        return any(self._clusters.failover_expected(r) for r in regions)

    async def _decide(
        self,
        req: RouteRequest,
        ctx: CallContext,
        workflow_id: str,
        *,
        dry_run: bool,
        deadline: float | None = None,
    ) -> Attempt:
        """Route, and audit the decision (or the refusal) before anything acts on it.
        With a ``deadline``, a refusal while a flip is coming waits for the flip first."""
        outcome = self._route(req)
        while deadline is not None and self._flip_coming(outcome):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await self._clusters.wait_change(left)
            outcome = self._route(req)
        if isinstance(outcome, Refusal):
            log.info(
                "refused %s for tenant %s: %s", req.workflow_type, req.tenant_id, outcome.message
            )
            record = refusal_record(req, outcome, ctx, workflow_id=workflow_id)
            await self._audit.append({**record, "dry_run": dry_run})
            raise_refusal(outcome)
        receipt = await self._record_decision(req, outcome, ctx, workflow_id, dry_run=dry_run)
        return Attempt(outcome, receipt)

    async def _record_decision(
        self,
        req: RouteRequest,
        decision: Decision,
        ctx: CallContext,
        workflow_id: str,
        *,
        dry_run: bool = False,
        retry_of: int | None = None,
    ) -> Receipt | None:
        key_id = self._config.current.key_id(decision.region)
        kind = "route.explain" if dry_run else "route.decision"
        record = decision_record(kind, req, decision, ctx, workflow_id=workflow_id, key_id=key_id)
        if retry_of is not None:
            record["retry_of_seq"] = retry_of
        return await self._audit.append(record)

    async def explain(
        self, inp: StartInput, *, principal: Principal = IN_PROCESS, trace_id: str = ""
    ) -> tuple[Decision, Receipt | None]:
        """The decision a start would take now, audited as a dry run; no effect on Temporal."""
        req = self._request(inp)
        ctx = CallContext(principal, inp.request_id or str(uuid.uuid4()), trace_id)
        attempt = await self._decide(req, ctx, inp.workflow_id, dry_run=True)
        return attempt.decision, attempt.receipt

    async def start(
        self,
        inp: StartInput,
        *,
        remaining: float | None,
        principal: Principal = IN_PROCESS,
        trace_id: str = "",
    ) -> StartResult:
        req = self._request(inp)
        deadline = time.monotonic() + budget(remaining, self._config.config.temporal.call_timeout)
        workflow_id = inp.workflow_id or str(uuid.uuid4())
        ctx = CallContext(principal, inp.request_id or str(uuid.uuid4()), trace_id)
        first = await self._decide(req, ctx, workflow_id, dry_run=False, deadline=deadline)
        sent = await self._send_with_failover(
            first, _Job(req, inp.args, ctx, workflow_id, deadline)
        )
        attempt, decision = sent.attempt, sent.attempt.decision
        if sent.outcome is None:
            assert sent.error is not None
            if not isinstance(sent.error, AuditUnavailable):  # else there is no log to write to
                await self._audit.append(outcome_record(
                    ctx=ctx, workflow_id=workflow_id, decision_seq=attempt.seq,
                    cluster=decision.cluster, error=sent.error.message,
                ))  # fmt: skip
            raise sent.error
        try:
            outcome = await self._audit.append(outcome_record(
                ctx=ctx, workflow_id=workflow_id, decision_seq=attempt.seq,
                cluster=decision.cluster, run_id=sent.outcome.run_id,
                started=sent.outcome.started, retried_from=attempt.retried_from,
            ))  # fmt: skip
        except AuditUnavailable as exc:
            raise AuditUnavailable(
                f"{exc.message}; workflow {workflow_id} was started on {decision.cluster} but "
                "its outcome is not recorded: retry with the same id (it is idempotent)"
            ) from exc
        self._locations.put(
            workflow_id,
            Location(
                decision.cluster, decision.namespace, decision.region, decision.zone, req.tenant_id
            ),
        )
        return StartResult(
            workflow_id, sent.outcome.run_id, sent.outcome.started, decision, ctx.request_id,
            decision_receipt=attempt.receipt, receipt=outcome,
            temporal_seconds=sent.outcome.elapsed,
        )  # fmt: skip

    async def _send_with_failover(self, first: Attempt, job: _Job) -> Sent:
        """The failover rule for starts in flight (see the module's docstring)."""
        sent = await self._send(first, job)
        error = sent.error
        if not isinstance(error, ClusterUnavailable) or error.may_have_reached:
            return sent
        failed = first.decision
        retry = await self._after_refused(job.req, failed, job.deadline)
        if not isinstance(retry, Decision):
            why = "no other compliant cluster took over in time"
            if isinstance(retry, Refusal):
                why = f"no other compliant cluster is healthy ({retry.message})"
            return Sent(first, error=ClusterUnavailable(
                f"{error.message}, and {why}; workflow id {job.workflow_id} was not started: "
                "safe to retry with the same id",
                cluster=failed.cluster, may_have_reached=False,
            ))  # fmt: skip
        log.info("start of %s refused by %s; retrying on %s",
                 job.workflow_id, failed.cluster, retry.cluster)  # fmt: skip
        try:
            receipt = await self._record_decision(
                job.req, retry, job.ctx, job.workflow_id, retry_of=first.seq
            )
        except AuditUnavailable as exc:
            return Sent(first, error=exc)
        return await self._send(Attempt(retry, receipt, retried_from=failed.cluster), job)

    async def _send(self, attempt: Attempt, job: _Job) -> Sent:
        d = attempt.decision
        timeout = job.deadline - time.monotonic()
        if timeout <= 0:
            return Sent(attempt, error=DeadlineExceeded(f"no time left to start {job.workflow_id}"))
        try:
            outcome = await self._gateway.start(
                d,
                workflow_id=job.workflow_id,
                workflow_type=job.req.workflow_type,
                args=job.args,
                memo=WorkflowMemo.of(job.req, d, job.ctx.request_id),
                request_id=job.ctx.request_id,
                timeout=timeout,
            )
        except ClusterUnavailable as exc:
            self._clusters.nudge(d.cluster)  # passive evidence: probe it now
            if not exc.may_have_reached:
                return Sent(attempt, error=exc)
            return Sent(attempt, error=ClusterUnavailable(
                f"{exc.message}. The start may have reached {d.cluster}, so Meridian did "
                f"not send it to another cluster; workflow id {job.workflow_id}: safe to "
                "retry with the same id",
                cluster=d.cluster, may_have_reached=True,
            ))  # fmt: skip
        except MeridianError as exc:
            return Sent(attempt, error=exc)
        if not outcome.started:
            taken = await self._owned_elsewhere(d, job, outcome.run_id)
            if taken is not None:
                return Sent(attempt, error=taken)
        return Sent(attempt, outcome=outcome)

    async def _owned_elsewhere(self, d: Decision, job: _Job, run_id: str) -> MeridianError | None:
        """A duplicate start returns the existing run only to its own tenant: another
        tenant's (or a run not started through Meridian) makes the id taken, and the
        caller learns nothing of it. Else the caller could obtain a home reference, and
        this replica a cache entry, for a run that is not theirs."""
        timeout = job.deadline - time.monotonic()
        try:
            if timeout <= 0:
                raise DeadlineExceeded("no time left")
            info = await self._gateway.describe(
                Target(d.cluster, d.namespace, job.workflow_id, run_id), timeout=timeout
            )
        except MeridianError as exc:
            # The run exists there (the start said so) but its owner is unconfirmed:
            # fail closed; retrying with the same id is safe.
            return ClusterUnavailable(
                f"workflow id {job.workflow_id} is already in use on {d.cluster}, and "
                f"Meridian could not confirm it is this tenant's run ({exc.message}); "
                "retry with the same id",
                cluster=d.cluster, may_have_reached=True,
            )  # fmt: skip
        if info.memo is not None and info.memo.tenant_id == job.req.tenant_id:
            return None
        return WorkflowIdTaken(
            f"workflow id {job.workflow_id} is already in use; choose another",
            workflow_id=job.workflow_id,
        )

    async def _after_refused(
        self, req: RouteRequest, failed: Decision, deadline: float
    ) -> Decision | Refusal | None:
        """Wait (until ``deadline``) for the view to route ``req`` somewhere other than
        the cluster that refused the connection. A refusal for want of a healthy cluster
        is final only when no flip is coming: while a region's state machine has a
        healthy standby to fail over to, the start waits for it. None: out of time."""
        while True:
            outcome = self._route(req)
            if isinstance(outcome, Decision) and outcome.cluster != failed.cluster:
                return outcome
            if isinstance(outcome, Refusal) and not self._flip_coming(outcome):
                return outcome
            left = deadline - time.monotonic()
            if left <= 0:
                return outcome if isinstance(outcome, Refusal) else None
            await self._clusters.wait_change(left)
