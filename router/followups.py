"""Operations on workflows that exist: locate, describe, signal, query, cancel, result.

A follow-up names a workflow by id and tenant. A home reference it carries must open for
them (else NOT_FOUND, as for an unknown id). Its home is found, cheapest first:
1. the location cache (this replica started or found it): one describe, or none;
2. the home reference the caller kept from the start (``WorkflowRef.home``, see
   ``router.homes``): that cluster, then only the rest of its region;
3. the start's routing inputs, when the caller gives them: the regions those inputs
   can route to (``policy.possible_regions``), widened only if it is not there;
4. else every cluster where the tenant's workflows can live (its zone's, or all).
Whichever way, only the run's memo decides whether it belongs to the tenant. A closed run
is told apart from a missing one: signalling or cancelling a completed workflow is
FAILED_PRECONDITION naming its status, not NOT_FOUND and not a silent OK.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from router import metrics
from router.config.runtime import ConfigController
from router.core.model import DataClass, RouteRequest, RoutingTable
from router.core.policy import possible_regions
from router.core.validate import (
    check_args_size,
    check_country,
    check_name,
    check_subdivision,
    check_workflow_id,
)
from router.deadlines import budget
from router.errors import (
    ClusterUnavailable,
    DeadlineExceeded,
    InvalidArgument,
    WorkflowNotFound,
    WorkflowOperationFailed,
)
from router.homes import MAX_LENGTH, Home, HomeRefs
from router.temporal.gateway import Gateway, ResultOutcome, WorkflowInfo
from router.temporal.locator import Location, LocationCache, Pair, not_found, search

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ref:
    workflow_id: str
    run_id: str
    tenant_id: str
    # The caller's home reference (router.homes), if it kept one.
    home: str = ""
    # The start's routing inputs, if the caller gives them (user_country and data_class
    # together): they narrow a search.
    user_country: str = ""
    user_subdivision: str = ""
    data_class: DataClass | None = None


@dataclass(frozen=True, slots=True)
class _Hints:
    """What a checked reference says about where to look: the home its reference
    names (opened), or the start's routing inputs."""

    home: Home | None
    inputs: RouteRequest | None


class _Trace:
    """How one follow-up found its home, and how many Temporal calls it made (the
    ``meridian_followup_temporal_calls`` histogram: how far follow-ups fan out)."""

    __slots__ = ("calls", "path")

    def __init__(self) -> None:
        self.path = "cache"
        self.calls = 0


class Followups:
    def __init__(
        self,
        config: ConfigController,
        gateway: Gateway,
        locations: LocationCache,
        homes: HomeRefs,
    ) -> None:
        self._config = config
        self._gateway = gateway
        self._locations = locations
        self._homes = homes

    def home_of(self, workflow_id: str, loc: Location) -> str:
        """The home reference to hand the caller for ``workflow_id`` at ``loc``."""
        return self._homes.seal(
            workflow_id, loc.tenant_id, Home(loc.region, loc.cluster, loc.namespace)
        )

    def _check_ref(self, ref: Ref) -> _Hints:
        """Check the reference. A home reference that does not open for this workflow
        and tenant is NOT_FOUND here, before any cache or cluster is consulted, worded
        exactly as for an unknown id."""
        table = self._config.config.table
        check_workflow_id(ref.workflow_id, table, required=True)
        check_name("tenant_id", ref.tenant_id, limit=table.limits.max_tenant_id_length)
        check_name("run_id", ref.run_id, limit=64, required=False)
        home: Home | None = None
        if ref.home:
            if len(ref.home) > MAX_LENGTH:
                raise InvalidArgument(
                    field="home",
                    reason=f"{len(ref.home)} characters; a home reference is at most {MAX_LENGTH}",
                )
            home = self._homes.open(ref.home, ref.workflow_id, ref.tenant_id)
            if home is None:
                raise not_found(ref.workflow_id, ref.tenant_id)
        return _Hints(home, _inputs(ref, table))

    def _deadline(self, remaining: float | None) -> float:
        """One deadline for a whole follow-up (it may take a describe, a search and the
        operation): the caller's, else ``temporal.call_timeout``."""
        return time.monotonic() + budget(remaining, self._config.config.temporal.call_timeout)

    @staticmethod
    def _left(deadline: float) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the deadline passed before Meridian could answer")
        return left

    def _tenant_pairs(self, tenant_id: str) -> list[Pair]:
        """Every (cluster, namespace) where this tenant's workflows can live: its
        residency zone's, when it declares one; else all."""
        table = self._config.config.table
        tenant = table.tenants.get(tenant_id)
        zone = tenant.residency_zone if tenant is not None else None
        return [
            (c, ns)
            for c in table.clusters.values()
            if zone is None or c.zone == zone
            for ns in c.namespaces
        ]

    async def _search(
        self, ref: Ref, pairs: Sequence[Pair], deadline: float, trace: _Trace
    ) -> tuple[Location, WorkflowInfo]:
        trace.calls += len(pairs)
        return await search(
            self._gateway,
            pairs,
            workflow_id=ref.workflow_id,
            run_id=ref.run_id,
            tenant_id=ref.tenant_id,
            timeout=self._left(deadline),
        )

    async def locate(self, ref: Ref, *, remaining: float | None) -> tuple[Location, WorkflowInfo]:
        """The workflow's home and its description."""
        hints = self._check_ref(ref)
        trace = _Trace()
        try:
            return await self._locate(ref, hints, self._deadline(remaining), trace, cached=True)
        finally:
            _record("describe", trace)

    async def _locate(
        self,
        ref: Ref,
        hints: _Hints,
        deadline: float,
        trace: _Trace,
        *,
        cached: bool,
    ) -> tuple[Location, WorkflowInfo]:
        """From the cache when ``cached`` and the cached home still has it for this
        tenant; else from the home reference, the routing inputs, or a search."""
        loc = self._locations.get(ref.workflow_id, ref.tenant_id) if cached else None
        if loc is not None:
            trace.calls += 1
            try:
                info = await self._gateway.describe(
                    loc.target(ref.workflow_id, ref.run_id), timeout=self._left(deadline)
                )
            except (WorkflowNotFound, ClusterUnavailable) as exc:
                if isinstance(exc, ClusterUnavailable) and exc.may_have_reached:
                    raise
                self._locations.forget(ref.workflow_id)  # stale: look again
            else:
                if info.memo is not None and info.memo.tenant_id == ref.tenant_id:
                    return loc, info
        if hints.home is not None:
            trace.path = "home"
            found = await self._from_home(ref, hints.home, deadline, trace)
        elif hints.inputs is not None:
            trace.path = "inputs"
            found = await self._from_inputs(ref, hints.inputs, deadline, trace)
        else:
            trace.path = "search"
            found = await self._search(ref, self._tenant_pairs(ref.tenant_id), deadline, trace)
        self._locations.put(ref.workflow_id, found[0])
        return found

    async def _from_home(
        self, ref: Ref, home: Home, deadline: float, trace: _Trace
    ) -> tuple[Location, WorkflowInfo]:
        """The reference's cluster; if the workflow is not there (or it cannot be
        asked), the other clusters of its region (a standby that took it over)."""
        table = self._config.config.table
        region = table.regions.get(home.region)
        cluster = table.clusters.get(home.cluster)
        if region is None or cluster is None or cluster.region != home.region:
            # The config no longer has that home: look where the tenant's workflows live.
            trace.path = "search"
            return await self._search(ref, self._tenant_pairs(ref.tenant_id), deadline, trace)
        try:
            return await self._search(ref, [(cluster, home.namespace)], deadline, trace)
        except (WorkflowNotFound, ClusterUnavailable) as first:
            rest = [(c, home.namespace) for c in region.clusters if c.name != cluster.name]
            if not rest:
                raise
            try:
                return await self._search(ref, rest, deadline, trace)
            except WorkflowNotFound:
                raise first from None  # its home could not be asked: say so

    async def _from_inputs(
        self, ref: Ref, inputs: RouteRequest, deadline: float, trace: _Trace
    ) -> tuple[Location, WorkflowInfo]:
        """The regions the start's routing inputs can route to under the current
        config; if the workflow is not there (the config changed since), the rest of
        the clusters where the tenant's workflows can live."""
        table = self._config.config.table
        regions = possible_regions(inputs, table)
        pairs = [(c, ns) for r in regions for c in table.regions[r].clusters for ns in c.namespaces]
        try:
            return await self._search(ref, pairs, deadline, trace)
        except WorkflowNotFound:
            asked = {(c.name, ns) for c, ns in pairs}
            rest = [p for p in self._tenant_pairs(ref.tenant_id) if (p[0].name, p[1]) not in asked]
            if not rest:
                raise
            return await self._search(ref, rest, deadline, trace)

    async def _on_home(
        self,
        ref: Ref,
        remaining: float | None,
        op: Callable[[Location, float], Awaitable[T]],
        trace: _Trace,
        *,
        needs_open: str = "",
    ) -> tuple[Location, T]:
        """Run ``op`` on the workflow's home straight from the cache (no describe round
        trip: this replica saw the run is the tenant's). Otherwise, or when the cached
        home says "not found" (stale, a cluster no longer in the config, a run that
        closed), locate it afresh (a home reference too is described first: it is
        long-lived, and only the run's memo says whose the run is now); when
        ``needs_open`` names the operation, a closed run is FAILED_PRECONDITION naming
        its status."""
        hints = self._check_ref(ref)
        deadline = self._deadline(remaining)
        loc = self._locations.get(ref.workflow_id, ref.tenant_id)
        if loc is not None:
            trace.calls += 1
            try:
                return loc, await op(loc, self._left(deadline))
            except (WorkflowNotFound, ClusterUnavailable) as exc:
                if isinstance(exc, ClusterUnavailable) and exc.may_have_reached:
                    raise  # it may have happened: never done twice
        loc, info = await self._locate(ref, hints, deadline, trace, cached=False)
        if needs_open:
            _require_open(ref, info, needs_open)
        trace.calls += 1
        try:
            return loc, await op(loc, self._left(deadline))
        except WorkflowNotFound:
            if needs_open:  # it closed between the describe and the operation
                _, info = await self._locate(ref, hints, deadline, trace, cached=False)
                _require_open(ref, info, needs_open)
            raise

    async def describe(self, ref: Ref, *, remaining: float | None) -> tuple[Location, WorkflowInfo]:
        return await self.locate(ref, remaining=remaining)

    async def signal(
        self, ref: Ref, name: str, args: Sequence[Any], args_size: int, *, remaining: float | None
    ) -> Location:
        check_name("signal_name", name, limit=1000)
        check_args_size("args", args_size, self._config.config.table)

        async def op(loc: Location, timeout: float) -> None:
            target = loc.target(ref.workflow_id, ref.run_id)
            await self._gateway.signal(target, name, args, timeout=timeout)

        trace = _Trace()
        try:
            loc, _ = await self._on_home(ref, remaining, op, trace, needs_open=f"signal {name!r}")
        finally:
            _record("signal", trace)
        return loc

    async def query(
        self, ref: Ref, name: str, args: Sequence[Any], args_size: int, *, remaining: float | None
    ) -> tuple[Location, Any]:
        check_name("query_name", name, limit=1000)
        check_args_size("args", args_size, self._config.config.table)

        async def op(loc: Location, timeout: float) -> Any:
            target = loc.target(ref.workflow_id, ref.run_id)
            return await self._gateway.query(target, name, args, timeout=timeout)

        # A closed run still answers queries (a worker replays it): no open check.
        trace = _Trace()
        try:
            return await self._on_home(ref, remaining, op, trace)
        finally:
            _record("query", trace)

    async def cancel(self, ref: Ref, *, remaining: float | None) -> Location:
        # Described first, always: Temporal accepts a cancel of a closed run silently.
        hints = self._check_ref(ref)
        deadline = self._deadline(remaining)
        trace = _Trace()
        try:
            loc, info = await self._locate(ref, hints, deadline, trace, cached=True)
            _require_open(ref, info, "cancel")
            trace.calls += 1
            try:
                await self._gateway.cancel(
                    loc.target(ref.workflow_id, ref.run_id), timeout=self._left(deadline)
                )
            except WorkflowNotFound:
                _, info = await self._locate(ref, hints, deadline, trace, cached=False)
                _require_open(ref, info, "cancel")  # it closed in between
                raise
        finally:
            _record("cancel", trace)
        return loc

    async def result(
        self, ref: Ref, *, remaining: float | None
    ) -> tuple[Location, WorkflowInfo, ResultOutcome]:
        began = time.monotonic()
        hints = self._check_ref(ref)
        trace = _Trace()
        try:
            loc, info = await self._locate(
                ref, hints, self._deadline(remaining), trace, cached=True
            )
            target = loc.target(ref.workflow_id, info.run_id)
            left = None if remaining is None else remaining - (time.monotonic() - began)
            wait = budget(left, self._config.config.temporal.result_wait)
            trace.calls += 1
            return loc, info, await self._gateway.result(target, timeout=wait)
        finally:
            _record("result", trace)


def _inputs(ref: Ref, table: RoutingTable) -> RouteRequest | None:
    """The start's routing inputs the reference carries, checked like a start's; None
    when it carries none."""
    if not (ref.user_country or ref.user_subdivision or ref.data_class is not None):
        return None
    if ref.data_class is None:
        raise InvalidArgument(
            field="data_class",
            reason="required with user_country: the routing inputs narrow a search together",
        )
    if not ref.user_country:
        raise InvalidArgument(
            field="user_country",
            reason="required with data_class: the routing inputs narrow a search together",
        )
    country = check_country(ref.user_country, table)
    return RouteRequest(
        workflow_type="",  # any: a follow-up does not know it
        tenant_id=ref.tenant_id,
        user_country=country,
        data_class=ref.data_class,
        user_subdivision=check_subdivision(ref.user_subdivision, country, table),
    )


def _record(op: str, trace: _Trace) -> None:
    metrics.followup_calls.record(trace.calls, {"op": op, "path": trace.path})


def _require_open(ref: Ref, info: WorkflowInfo, what: str) -> None:
    if info.status is not None and not info.status.open:
        raise WorkflowOperationFailed(
            f"workflow {ref.workflow_id} (run {info.run_id}) is {info.status.name}: "
            f"a closed run cannot take a {what}"
        )
