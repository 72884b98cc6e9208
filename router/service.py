"""The application object: wires config, routing core, Temporal adapters and health.

The gRPC servicers and the CLI call this; it calls the pure core to decide and the
adapters to act. It holds the only mutable references (current config, cluster view),
each replaced whole, never edited, so a request sees one consistent table and view.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from temporalio.converter import DataConverter

from router.codec import KeyProvider, KeyRingHolder, RegionCodec, data_converter
from router.config.settings import ResolvedConfig
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
    DeadlineExceeded,
    NoHealthyTarget,
    ResidencyUnsatisfiable,
    WorkflowNotFound,
)
from router.temporal.gateway import Gateway, ResultOutcome, WorkflowInfo
from router.temporal.health import HealthMonitor
from router.temporal.locator import Location, LocationCache, search
from router.temporal.pool import ClientPool

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


@dataclass(frozen=True, slots=True)
class Ref:
    workflow_id: str
    run_id: str
    tenant_id: str


def raise_refusal(refusal: Refusal) -> None:
    if refusal.kind is RefusalKind.RESIDENCY:
        raise ResidencyUnsatisfiable(refusal.message, zone=refusal.residency_zone)
    raise NoHealthyTarget(refusal.message, zone=refusal.residency_zone)


class Meridian:
    def __init__(self, config: ResolvedConfig, keys: KeyProvider) -> None:
        self._config = config
        self._keys = keys
        self._codecs: dict[str, tuple[KeyRingHolder, DataConverter]] = {}
        self._load_codecs(config)
        self._key_refresh: list[asyncio.Task[None]] = []
        self._pool = ClientPool(
            self._converter_for, connect_timeout=config.temporal.connect_timeout
        )
        self._gateway = Gateway(self._pool)
        self._health = HealthMonitor(self._pool, config.health, on_change=self._rebuild_view)
        self._locations = LocationCache()
        self._view = ClusterView(active=MappingProxyType({}), healthy=frozenset())
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
        """Connect (lazily) to every cluster and wait for one round of health probes."""
        self._key_refresh = [
            asyncio.create_task(holder.refresh_forever(), name=f"keys-{region}")
            for region, (holder, _) in self._codecs.items()
        ]
        clusters = list(self._config.table.clusters.values())
        await self._pool.sync(clusters)
        self._health.sync(clusters, self._config.health)
        await self._health.wait_first_round(first_probe_timeout)
        self._rebuild_view()

    async def close(self) -> None:
        for task in self._key_refresh:
            task.cancel()
        await asyncio.gather(*self._key_refresh, return_exceptions=True)
        await self._health.close()

    async def apply_config(self, config: ResolvedConfig) -> None:
        """Swap in an already validated config: keys and connections first, then the table."""
        self._load_codecs(config)
        clusters = list(config.table.clusters.values())
        await self._pool.sync(clusters)
        self._config = config
        self._health.sync(clusters, config.health)
        self._rebuild_view()

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

    def _rebuild_view(self) -> None:
        table = self._config.table
        # Issue 4 replaces "the primary is active" with the failover state machine.
        self._view = ClusterView(
            active=MappingProxyType({r.name: r.primary.name for r in table.regions.values()}),
            healthy=self._health.healthy() & frozenset(table.clusters),
        )

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

    def explain(self, inp: StartInput) -> Decision:
        """The decision a start would take now; no effect anywhere."""
        outcome = route(self._request(inp), self._config.table, self._view)
        if isinstance(outcome, Refusal):
            raise_refusal(outcome)
            raise AssertionError("unreachable")
        return outcome

    async def start_workflow(self, inp: StartInput, *, remaining: float | None) -> StartResult:
        table = self._config.table
        req = self._request(inp)
        outcome = route(req, table, self._view)
        if isinstance(outcome, Refusal):
            log.info(
                "refused %s for tenant %s: %s", req.workflow_type, req.tenant_id, outcome.message
            )
            raise_refusal(outcome)
            raise AssertionError("unreachable")
        decision = outcome
        workflow_id = inp.workflow_id or str(uuid.uuid4())
        request_id = inp.request_id or str(uuid.uuid4())
        memo = {
            "tenant_id": req.tenant_id,
            "data_class": req.data_class.value,
            "user_country": req.user_country,
            "zone": decision.zone,
            "residency_zone": decision.residency_zone,
            "region": decision.region,
            "cluster": decision.cluster,
            "rule": decision.rule,
            "config_version": decision.config_version,
            "request_id": request_id,
        }
        started = await self._gateway.start(
            decision,
            workflow_id=workflow_id,
            workflow_type=req.workflow_type,
            args=inp.args,
            memo=memo,
            request_id=request_id,
            timeout=self._call_budget(remaining),
        )
        self._locations.put(
            workflow_id,
            Location(
                decision.cluster, decision.namespace, decision.region, decision.zone, req.tenant_id
            ),
        )
        log.debug(
            "%s %s on %s/%s run %s",
            "started" if started.started else "existing",
            workflow_id,
            decision.cluster,
            decision.namespace,
            started.run_id,
        )
        return StartResult(workflow_id, started.run_id, started.started, decision, request_id)

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
