"""Operations on workflows that exist: locate, describe, signal, query, cancel, result.

A follow-up names a workflow by id and tenant. Its home is the cluster this replica
started it on (the location cache), else the one a search of every cluster where the
tenant's workflows can live finds; either way only the run's memo decides whether it
belongs to the tenant. A closed run is told apart from a missing one: signalling or
cancelling a completed workflow is FAILED_PRECONDITION naming its status, not NOT_FOUND
and not a silent OK.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from router.config.runtime import ConfigController
from router.core.model import ClusterSpec
from router.core.validate import check_args_size, check_name, check_workflow_id
from router.deadlines import budget
from router.errors import (
    ClusterUnavailable,
    DeadlineExceeded,
    WorkflowNotFound,
    WorkflowOperationFailed,
)
from router.temporal.gateway import Gateway, ResultOutcome, WorkflowInfo
from router.temporal.locator import Location, LocationCache, search

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Ref:
    workflow_id: str
    run_id: str
    tenant_id: str


class Followups:
    def __init__(
        self, config: ConfigController, gateway: Gateway, locations: LocationCache
    ) -> None:
        self._config = config
        self._gateway = gateway
        self._locations = locations

    def _check_ref(self, ref: Ref) -> None:
        table = self._config.config.table
        check_workflow_id(ref.workflow_id, table, required=True)
        check_name("tenant_id", ref.tenant_id, limit=table.limits.max_tenant_id_length)
        check_name("run_id", ref.run_id, limit=64, required=False)

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

    def _candidates(self, tenant_id: str) -> list[ClusterSpec]:
        """Every cluster where this tenant's workflows can live: its residency zone's,
        when it declares one; else all."""
        table = self._config.config.table
        tenant = table.tenants.get(tenant_id)
        clusters = list(table.clusters.values())
        if tenant is not None and tenant.residency_zone is not None:
            clusters = [c for c in clusters if c.zone == tenant.residency_zone]
        return clusters

    async def locate(self, ref: Ref, *, remaining: float | None) -> tuple[Location, WorkflowInfo]:
        """The workflow's home and its description."""
        self._check_ref(ref)
        return await self._locate(ref, self._deadline(remaining), cached=True)

    async def _locate(
        self, ref: Ref, deadline: float, *, cached: bool
    ) -> tuple[Location, WorkflowInfo]:
        """From the cache when ``cached`` and the cached home still has it for this
        tenant; else from a search of every cluster where its tenant's workflows live."""
        loc = self._locations.get(ref.workflow_id, ref.tenant_id) if cached else None
        if loc is not None:
            try:
                info = await self._gateway.describe(
                    loc.target(ref.workflow_id, ref.run_id), timeout=self._left(deadline)
                )
            except (WorkflowNotFound, ClusterUnavailable) as exc:
                if isinstance(exc, ClusterUnavailable) and exc.may_have_reached:
                    raise
                self._locations.forget(ref.workflow_id)  # stale: ask everywhere
            else:
                if info.memo is not None and info.memo.tenant_id == ref.tenant_id:
                    return loc, info
        loc, info = await search(
            self._gateway,
            self._candidates(ref.tenant_id),
            workflow_id=ref.workflow_id,
            run_id=ref.run_id,
            tenant_id=ref.tenant_id,
            timeout=self._left(deadline),
        )
        self._locations.put(ref.workflow_id, loc)
        return loc, info

    async def _on_home(
        self,
        ref: Ref,
        remaining: float | None,
        op: Callable[[Location, float], Awaitable[T]],
        *,
        needs_open: str = "",
    ) -> tuple[Location, T]:
        """Run ``op`` on the workflow's home straight from the cache (no describe round
        trip). When the home says "not found" (a stale cache, a cluster no longer in the
        config, or a run that closed), locate it afresh; when ``needs_open`` names the
        operation, a closed run is FAILED_PRECONDITION naming its status."""
        self._check_ref(ref)
        deadline = self._deadline(remaining)
        loc = self._locations.get(ref.workflow_id, ref.tenant_id)
        if loc is not None:
            try:
                return loc, await op(loc, self._left(deadline))
            except (WorkflowNotFound, ClusterUnavailable) as exc:
                if isinstance(exc, ClusterUnavailable) and exc.may_have_reached:
                    raise  # it may have happened: never done twice
        loc, info = await self._locate(ref, deadline, cached=False)
        if needs_open:
            _require_open(ref, info, needs_open)
        try:
            return loc, await op(loc, self._left(deadline))
        except WorkflowNotFound:
            if needs_open:  # it closed between the describe and the operation
                _, info = await self._locate(ref, deadline, cached=False)
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

        loc, _ = await self._on_home(ref, remaining, op, needs_open=f"signal {name!r}")
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
        return await self._on_home(ref, remaining, op)

    async def cancel(self, ref: Ref, *, remaining: float | None) -> Location:
        # Described first, always: Temporal accepts a cancel of a closed run silently.
        self._check_ref(ref)
        deadline = self._deadline(remaining)
        loc, info = await self._locate(ref, deadline, cached=True)
        _require_open(ref, info, "cancel")
        try:
            await self._gateway.cancel(
                loc.target(ref.workflow_id, ref.run_id), timeout=self._left(deadline)
            )
        except WorkflowNotFound:
            _, info = await self._locate(ref, deadline, cached=False)
            _require_open(ref, info, "cancel")  # it closed in between
            raise
        return loc

    async def result(
        self, ref: Ref, *, remaining: float | None
    ) -> tuple[Location, WorkflowInfo, ResultOutcome]:
        began = time.monotonic()
        loc, info = await self.locate(ref, remaining=remaining)
        target = loc.target(ref.workflow_id, info.run_id)
        left = None if remaining is None else remaining - (time.monotonic() - began)
        wait = budget(left, self._config.config.temporal.result_wait)
        return loc, info, await self._gateway.result(target, timeout=wait)


def _require_open(ref: Ref, info: WorkflowInfo, what: str) -> None:
    if info.status is not None and not info.status.open:
        raise WorkflowOperationFailed(
            f"workflow {ref.workflow_id} (run {info.run_id}) is {info.status.name}: "
            f"a closed run cannot take a {what}"
        )
