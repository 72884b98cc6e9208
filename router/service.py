"""The application object: wires config, routing core, Temporal adapters and health.

The gRPC servicers and the CLI call this; it calls the pure core to decide and the
adapters to act. It holds the only mutable references (current config, cluster view),
each replaced whole, never edited, so a request sees one consistent table and view.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

from temporalio.converter import DataConverter

from router.audit import (
    AuditSink,
    CallContext,
    Receipt,
    config_record,
    decision_record,
    outcome_record,
    refusal_record,
)
from router.codec import KeyProvider, KeyRingHolder, RegionCodec, data_converter
from router.config.settings import ResolvedConfig
from router.core.failover import FlipRefused, FlipRequested, RegionState
from router.core.health import ProbeState
from router.core.impact import Impact, route_changes
from router.core.model import (
    ClusterSpec,
    ClusterView,
    DataClass,
    Decision,
    Priority,
    Refusal,
    RefusalKind,
    RouteRequest,
)
from router.core.policy import route
from router.core.validate import build_request, check_args_size, check_name, check_workflow_id
from router.errors import (
    AuditUnavailable,
    ClusterUnavailable,
    ConfigError,
    DeadlineExceeded,
    InvalidArgument,
    MeridianError,
    NoHealthyTarget,
    ResidencyUnsatisfiable,
    WorkflowNotFound,
)
from router.failover import FailoverController, FlipStore
from router.temporal.gateway import Gateway, ResultOutcome, StartOutcome, WorkflowInfo
from router.temporal.health import HealthMonitor
from router.temporal.locator import Location, LocationCache, search
from router.temporal.pool import ClientPool

if TYPE_CHECKING:
    from router.live import LiveStatus

log = logging.getLogger(__name__)
T = TypeVar("T")

# Left for the router's own work after the Temporal call, out of the caller's deadline.
_MARGIN = 0.005


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


@dataclass(frozen=True, slots=True)
class Ref:
    workflow_id: str
    run_id: str
    tenant_id: str


def raise_refusal(refusal: Refusal) -> NoReturn:
    if refusal.kind is RefusalKind.RESIDENCY:
        raise ResidencyUnsatisfiable(refusal.message, zone=refusal.residency_zone)
    raise NoHealthyTarget(refusal.message, zone=refusal.residency_zone)


@dataclass(slots=True)
class _Attempt:
    """Progress of one start: the decision it is on and that decision's audit receipt."""

    decision: Decision
    receipt: Receipt | None
    retried_from: str = ""


@dataclass(frozen=True, slots=True)
class FlipOutcome:
    before: RegionState
    after: RegionState
    dry_run: bool
    # Dry runs only: the rule that would refuse the flip, and why ("" when it would go).
    refused_rule: str = ""
    refused_message: str = ""
    impact: Impact | None = None


class Meridian:
    def __init__(
        self,
        config: ResolvedConfig,
        keys: KeyProvider,
        *,
        audit: AuditSink,
        store: FlipStore | None = None,
        authority: Callable[[], bool] = lambda: True,
    ) -> None:
        self._config = config
        self._keys = keys
        self._codecs: dict[str, tuple[KeyRingHolder, DataConverter]] = {}
        self._load_codecs(config)
        self._tasks: list[asyncio.Task[None]] = []
        self._pool = ClientPool(
            self._converter_for, connect_timeout=config.temporal.connect_timeout
        )
        self._gateway = Gateway(self._pool)
        self._health = HealthMonitor(self._pool, config.health, on_change=self._health_changed)
        self._observations: set[asyncio.Task[None]] = set()
        self._audit = audit
        self._failover = FailoverController(
            config.table,
            audit,
            store=store,
            on_change=self._rebuild_view,
            health=self._probe_health,
            authority=authority,
        )
        self.last_rejected: tuple[float, ConfigError] | None = None
        # Set by a replicated deployment (router.live) for the status view.
        self.live_status: Callable[[], LiveStatus] | None = None
        self._locations = LocationCache()
        self._view = ClusterView(active=MappingProxyType({}), healthy=frozenset())
        self._view_changed = asyncio.Event()
        self._rebuild_view()

    # -- lifecycle -------------------------------------------------------------

    def _load_codecs(self, config: ResolvedConfig) -> None:
        """One key ring and codec per region, loaded before anything is sent: a region
        without its keys cannot be routed to (fail closed, at start-up)."""
        settings = config.codec
        for region in config.table.regions:
            if region in self._codecs:
                continue
            holder = KeyRingHolder(self._keys, region)
            codec = RegionCodec(
                holder,
                compression=settings.compression,
                compression_min_bytes=settings.compression_min_bytes,
            )
            self._codecs[region] = (holder, data_converter(codec))

    def _converter_for(self, cluster: ClusterSpec) -> DataConverter:
        return self._codecs[cluster.region][1]

    async def start(self, *, first_probe_timeout: float = 3.0) -> None:
        """Connect (lazily) to every cluster, probe each once and let the failover state
        machine act on what it saw, so the first request is routed on evidence."""
        self._tasks = [
            asyncio.create_task(holder.refresh_forever(), name=f"keys-{region}")
            for region, (holder, _) in self._codecs.items()
        ]
        self._tasks.append(asyncio.create_task(self._failover.run_ticks(), name="failover-ticks"))
        clusters = list(self._config.table.clusters.values())
        await self._pool.sync(clusters)
        self._health.sync(clusters, self._config.health)
        await self._health.wait_first_round(first_probe_timeout)
        await asyncio.gather(*list(self._observations), return_exceptions=True)
        self._rebuild_view()
        try:
            await self._record(config_record(
                outcome="loaded", source=self._config.source, version=self._config.version
            ))  # fmt: skip
        except AuditUnavailable as exc:
            log.error("could not record the config in the audit log: %s", exc.message)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._health.close()
        await asyncio.gather(*list(self._observations), return_exceptions=True)

    def _probe_health(self) -> dict[str, tuple[bool, str]]:
        return {
            name: (state.healthy, state.last_error)
            for name, state in self._health.states.items()
            if state.healthy is not None
        }

    def _health_changed(self, cluster: str, state: ProbeState) -> None:
        """From the prober: publish the new healthy set, and let the state machine act
        (in order: asyncio's lock is FIFO, and tasks start in creation order)."""
        self._rebuild_view()
        if state.healthy is None:
            return
        task = asyncio.create_task(self._failover.observe(cluster, state.healthy, state.last_error))
        self._observations.add(task)
        task.add_done_callback(self._observation_done)

    def _observation_done(self, task: asyncio.Task[None]) -> None:
        self._observations.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("failover: could not apply a health change", exc_info=task.exception())

    async def apply_config(self, config: ResolvedConfig) -> None:
        """Swap in an already validated config: its key rings first (a region without
        keys cannot be served: KeyRingError, nothing changes), then the audit record,
        then connections and the table."""
        self._load_codecs(config)
        await self._record(config_record(
            outcome="accepted", source=config.source, version=config.version,
            previous=self._config.version,
        ))  # fmt: skip
        clusters = list(config.table.clusters.values())
        await self._pool.sync(clusters)
        self._config = config
        self._failover.sync(config.table)
        self._health.sync(clusters, config.health)
        for name, state in self._health.states.items():
            if state.healthy is not None:
                await self._failover.observe(name, state.healthy, state.last_error)
        self._rebuild_view()

    async def reject_config(self, error: ConfigError) -> None:
        """A config change that failed validation: audited; the current config stays."""
        self.last_rejected = (time.time(), error)
        await self._record(config_record(
            outcome="rejected", source=error.source, version="", previous=self._config.version,
            errors=[str(e) for e in error.errors],
        ))  # fmt: skip

    # -- state -----------------------------------------------------------------

    @property
    def config(self) -> ResolvedConfig:
        return self._config

    @property
    def view(self) -> ClusterView:
        return self._view

    @property
    def health(self) -> HealthMonitor:
        return self._health

    @property
    def failover(self) -> FailoverController:
        return self._failover

    def _rebuild_view(self) -> None:
        """Publish the active clusters (state machine) and healthy set (prober) as one
        new immutable view, and wake whoever waits for a change."""
        self._view = ClusterView(
            active=MappingProxyType(self._failover.active()),
            healthy=self._health.healthy() & frozenset(self._config.table.clusters),
        )
        self._view_changed.set()
        self._view_changed = asyncio.Event()

    def _budget(self, remaining: float | None, limit: float) -> float:
        if remaining is None:
            return limit
        if remaining <= _MARGIN:
            raise DeadlineExceeded("the caller's deadline passed before Meridian could act")
        return min(limit, remaining - _MARGIN)

    # -- routing -----------------------------------------------------------------

    def _request(self, inp: StartInput) -> RouteRequest:
        table = self._config.table
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
        outcome = route(req, self._config.table, self._view)
        if isinstance(outcome, Refusal):
            log.info(
                "refused %s for tenant %s: %s", req.workflow_type, req.tenant_id, outcome.message
            )
        return outcome

    async def _record(self, record: dict[str, Any]) -> Receipt | None:
        """Append to the audit log; a record that cannot be written stops the action."""
        return await self._audit.append(record)

    async def _decide(
        self, req: RouteRequest, ctx: CallContext, workflow_id: str, *, dry_run: bool
    ) -> tuple[Decision, Receipt | None]:
        """Route, and audit the decision (or the refusal) before anything acts on it."""
        outcome = self._route(req)
        if isinstance(outcome, Refusal):
            record = refusal_record(req, outcome, ctx, workflow_id=workflow_id)
            await self._record({**record, "dry_run": dry_run})
            raise_refusal(outcome)
        receipt = await self._record_decision(req, outcome, ctx, workflow_id, dry_run=dry_run)
        return outcome, receipt

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
        key_id = self._codecs[decision.region][0].ring.active
        kind = "route.explain" if dry_run else "route.decision"
        record = decision_record(kind, req, decision, ctx, workflow_id=workflow_id, key_id=key_id)
        if retry_of is not None:
            record["retry_of_seq"] = retry_of
        return await self._record(record)

    async def explain(
        self, inp: StartInput, *, caller: str = "", trace_id: str = ""
    ) -> tuple[Decision, Receipt | None]:
        """The decision a start would take now, audited as a dry run; no effect on Temporal."""
        req = self._request(inp)
        ctx = CallContext(caller, inp.request_id or str(uuid.uuid4()), trace_id)
        return await self._decide(req, ctx, inp.workflow_id, dry_run=True)

    async def start_workflow(
        self, inp: StartInput, *, remaining: float | None, caller: str = "", trace_id: str = ""
    ) -> StartResult:
        req = self._request(inp)
        deadline = time.monotonic() + self._call_budget(remaining)
        workflow_id = inp.workflow_id or str(uuid.uuid4())
        ctx = CallContext(caller, inp.request_id or str(uuid.uuid4()), trace_id)
        decision, receipt = await self._decide(req, ctx, workflow_id, dry_run=False)
        attempt = _Attempt(decision, receipt)
        try:
            started = await self._start_with_failover(
                attempt, req=req, inp=inp, ctx=ctx, workflow_id=workflow_id, deadline=deadline
            )
        except MeridianError as exc:
            if not isinstance(exc, AuditUnavailable):  # else there is no log to write to
                await self._record(outcome_record(
                    ctx=ctx, workflow_id=workflow_id, decision_seq=_seq(attempt.receipt),
                    cluster=attempt.decision.cluster, error=exc.message,
                ))  # fmt: skip
            raise
        decision = attempt.decision
        try:
            outcome = await self._record(outcome_record(
                ctx=ctx, workflow_id=workflow_id, decision_seq=_seq(attempt.receipt),
                cluster=decision.cluster, run_id=started.run_id, started=started.started,
                retried_from=attempt.retried_from,
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
            workflow_id, started.run_id, started.started, decision, ctx.request_id,
            decision_receipt=attempt.receipt, receipt=outcome,
        )  # fmt: skip

    async def _start_with_failover(
        self,
        attempt: _Attempt,
        *,
        req: RouteRequest,
        inp: StartInput,
        ctx: CallContext,
        workflow_id: str,
        deadline: float,
    ) -> StartOutcome:
        """The failover rule for starts in flight: a start refused before sending is
        retried once on the new active cluster (a new decision, audited first); one that
        may have reached its cluster is never re-sent elsewhere."""
        decision = attempt.decision
        send = functools.partial(
            self._send_start, req=req, inp=inp, ctx=ctx, workflow_id=workflow_id, deadline=deadline
        )
        try:
            return await send(decision)
        except ClusterUnavailable as exc:
            self._health.nudge(decision.cluster)
            if exc.may_have_reached:
                raise ClusterUnavailable(
                    f"{exc.message}. The start may have reached {decision.cluster}, so Meridian "
                    f"did not send it to another cluster; workflow id {workflow_id}: safe "
                    "to retry with the same id",
                    cluster=decision.cluster,
                    may_have_reached=True,
                ) from exc
            retry = await self._after_refused(req, decision, deadline)
            if not isinstance(retry, Decision):
                why = "no other compliant cluster took over in time"
                if isinstance(retry, Refusal):
                    why = f"no other compliant cluster is healthy ({retry.message})"
                raise ClusterUnavailable(
                    f"{exc.message}, and {why}; workflow id {workflow_id} was not "
                    "started: safe to retry with the same id",
                    cluster=decision.cluster,
                    may_have_reached=False,
                ) from exc
        log.info("start of %s refused by %s; retrying on %s",
                 workflow_id, decision.cluster, retry.cluster)  # fmt: skip
        attempt.receipt = await self._record_decision(
            req, retry, ctx, workflow_id, retry_of=_seq(attempt.receipt)
        )
        attempt.decision, attempt.retried_from = retry, decision.cluster
        return await send(retry)

    async def _send_start(
        self,
        d: Decision,
        *,
        req: RouteRequest,
        inp: StartInput,
        ctx: CallContext,
        workflow_id: str,
        deadline: float,
    ) -> StartOutcome:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise DeadlineExceeded(f"no time left to start workflow {workflow_id}")
        memo = {
            "tenant_id": req.tenant_id,
            "data_class": req.data_class.value,
            "user_country": req.user_country,
            "zone": d.zone,
            "residency_zone": d.residency_zone,
            "region": d.region,
            "cluster": d.cluster,
            "rule": d.rule,
            "config_version": d.config_version,
            "request_id": ctx.request_id,
        }
        return await self._gateway.start(
            d,
            workflow_id=workflow_id,
            workflow_type=req.workflow_type,
            args=inp.args,
            memo=memo,
            request_id=ctx.request_id,
            timeout=timeout,
        )

    async def _after_refused(
        self, req: RouteRequest, failed: Decision, deadline: float
    ) -> Decision | Refusal | None:
        """Wait (until ``deadline``) for the view to route ``req`` somewhere other than
        the cluster that refused the connection; None if it does not happen in time."""
        while True:
            outcome = route(req, self._config.table, self._view)
            if isinstance(outcome, Refusal) or outcome.cluster != failed.cluster:
                return outcome
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._view_changed.wait(), left)

    # -- SRE controls --------------------------------------------------------------

    async def set_active_cluster(
        self,
        *,
        region: str,
        cluster: str,
        reason: str,
        force: bool,
        dry_run: bool,
        actor: str,
        remaining: float | None,
    ) -> FlipOutcome:
        req = FlipRequested(target=cluster, actor=actor, reason=reason, force=force)
        if not reason.strip():
            raise InvalidArgument(field="reason", reason="required: say why (it is audited)")
        if not dry_run:
            before, after = await self._failover.request(region, req)
            return FlipOutcome(before, after, dry_run=False)
        before, after, events = self._failover.preview(region, req)
        refused = next((e for e in events if isinstance(e, FlipRefused)), None)
        impact = await self._impact(before, after if refused is None else before, remaining)
        return FlipOutcome(
            before,
            after,
            dry_run=True,
            refused_rule=refused.rule if refused else "",
            refused_message=refused.message if refused else "",
            impact=impact,
        )

    async def _impact(
        self, before: RegionState, after: RegionState, remaining: float | None
    ) -> Impact:
        table = self._config.table
        hypothetical = ClusterView(
            active=MappingProxyType({**self._view.active, before.region: after.active}),
            healthy=self._view.healthy,
        )
        changes = route_changes(table, self._view, hypothetical)
        leaving = before.active
        spec = table.clusters[leaving]
        timeout = self._call_budget(remaining)
        try:
            counts = await asyncio.gather(
                *(
                    self._gateway.count_running(leaving, ns, timeout=timeout)
                    for ns in spec.namespaces
                )
            )
        except MeridianError as exc:
            return Impact(changes, leaving, None, exc.message)
        return Impact(changes, leaving, sum(counts), "")

    # -- follow-ups ----------------------------------------------------------------

    def _check_ref(self, ref: Ref) -> None:
        table = self._config.table
        check_workflow_id(ref.workflow_id, table, required=True)
        check_name("tenant_id", ref.tenant_id, limit=table.limits.max_tenant_id_length)
        check_name("run_id", ref.run_id, limit=64, required=False)

    def _candidates(self, tenant_id: str) -> list[ClusterSpec]:
        table = self._config.table
        tenant = table.tenants.get(tenant_id)
        clusters = list(table.clusters.values())
        if tenant is not None and tenant.residency_zone is not None:
            clusters = [c for c in clusters if c.zone == tenant.residency_zone]
        return clusters

    async def locate(self, ref: Ref, *, remaining: float | None) -> tuple[Location, WorkflowInfo]:
        self._check_ref(ref)
        timeout = self._call_budget(remaining)
        cached = self._locations.get(ref.workflow_id)
        if cached is not None and cached.tenant_id == ref.tenant_id:
            try:
                info = await self._gateway.describe(
                    cached.target(ref.workflow_id, ref.run_id), timeout=timeout
                )
            except WorkflowNotFound:
                self._locations.forget(ref.workflow_id)
            else:
                if info.memo.get("tenant_id") == ref.tenant_id:
                    return cached, info
        loc, info = await search(
            self._gateway,
            self._candidates(ref.tenant_id),
            workflow_id=ref.workflow_id,
            run_id=ref.run_id,
            tenant_id=ref.tenant_id,
            timeout=timeout,
        )
        self._locations.put(ref.workflow_id, loc)
        return loc, info

    async def _on_home(
        self, ref: Ref, remaining: float | None, op: Callable[[Location, float], Awaitable[T]]
    ) -> tuple[Location, T]:
        """Run ``op`` on the workflow's home: the cached one (no describe round-trip),
        or, when that is unknown or stale, the one a search finds."""
        self._check_ref(ref)
        cached = self._locations.get(ref.workflow_id)
        if cached is not None and cached.tenant_id == ref.tenant_id:
            try:
                return cached, await op(cached, self._call_budget(remaining))
            except WorkflowNotFound:
                self._locations.forget(ref.workflow_id)
        loc, _ = await self.locate(ref, remaining=remaining)
        return loc, await op(loc, self._call_budget(remaining))

    def _call_budget(self, remaining: float | None) -> float:
        return self._budget(remaining, self._config.temporal.call_timeout)

    async def describe(self, ref: Ref, *, remaining: float | None) -> tuple[Location, WorkflowInfo]:
        return await self.locate(ref, remaining=remaining)

    async def signal(
        self, ref: Ref, name: str, args: Sequence[Any], args_size: int, *, remaining: float | None
    ) -> Location:
        check_name("signal_name", name, limit=1000)
        check_args_size("args", args_size, self._config.table)

        async def op(loc: Location, timeout: float) -> None:
            target = loc.target(ref.workflow_id, ref.run_id)
            await self._gateway.signal(target, name, args, timeout=timeout)

        loc, _ = await self._on_home(ref, remaining, op)
        return loc

    async def query(
        self, ref: Ref, name: str, args: Sequence[Any], args_size: int, *, remaining: float | None
    ) -> tuple[Location, Any]:
        check_name("query_name", name, limit=1000)
        check_args_size("args", args_size, self._config.table)

        async def op(loc: Location, timeout: float) -> Any:
            target = loc.target(ref.workflow_id, ref.run_id)
            return await self._gateway.query(target, name, args, timeout=timeout)

        return await self._on_home(ref, remaining, op)

    async def cancel(self, ref: Ref, *, remaining: float | None) -> Location:
        loc, _ = await self.locate(ref, remaining=remaining)
        target = loc.target(ref.workflow_id, ref.run_id)
        await self._gateway.cancel(target, timeout=self._call_budget(remaining))
        return loc

    async def result(
        self, ref: Ref, *, remaining: float | None
    ) -> tuple[Location, WorkflowInfo, ResultOutcome]:
        loc, info = await self.locate(ref, remaining=remaining)
        target = loc.target(ref.workflow_id, info.run_id)
        wait = self._budget(remaining, self._config.temporal.result_wait)
        return loc, info, await self._gateway.result(target, timeout=wait)


def _seq(receipt: Receipt | None) -> int:
    return receipt.sequence if receipt is not None else 0
