"""Find a workflow's home cluster from its id alone.

Callers of Describe/Signal/Query/Cancel/GetResult name a workflow, not its routing
inputs. Each replica remembers where it started workflows (a bounded LRU); on a miss
(another replica started it, or a restart) it asks every candidate cluster in parallel
and trusts only the Meridian memo stored with the run, so a tenant can never reach
another tenant's workflow by guessing its id.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from temporalio.client import WorkflowExecutionStatus

from router.core.model import ClusterSpec
from router.errors import ClusterUnavailable, MeridianError, WorkflowNotFound
from router.temporal.gateway import Gateway, Target, WorkflowInfo


@dataclass(frozen=True, slots=True)
class Location:
    cluster: str
    namespace: str
    region: str
    zone: str
    tenant_id: str

    def target(self, workflow_id: str, run_id: str = "") -> Target:
        return Target(self.cluster, self.namespace, workflow_id, run_id)


class LocationCache:
    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, Location] = OrderedDict()

    def get(self, workflow_id: str) -> Location | None:
        loc = self._entries.get(workflow_id)
        if loc is not None:
            self._entries.move_to_end(workflow_id)
        return loc

    def put(self, workflow_id: str, loc: Location) -> None:
        self._entries[workflow_id] = loc
        self._entries.move_to_end(workflow_id)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, workflow_id: str) -> None:
        self._entries.pop(workflow_id, None)


async def search(
    gateway: Gateway,
    clusters: Iterable[ClusterSpec],
    *,
    workflow_id: str,
    run_id: str,
    tenant_id: str,
    timeout: float,
) -> tuple[Location, WorkflowInfo]:
    """Describe ``workflow_id`` on every (cluster, namespace) at once; keep the runs
    whose memo names ``tenant_id``; prefer a running one, then the latest started."""
    pairs = [(c, ns) for c in clusters for ns in c.namespaces]
    results = await asyncio.gather(
        *(
            gateway.describe(Target(c.name, ns, workflow_id, run_id), timeout=timeout)
            for c, ns in pairs
        ),
        return_exceptions=True,
    )
    found: list[tuple[Location, WorkflowInfo]] = []
    unreachable: list[str] = []
    for (cluster, ns), res in zip(pairs, results, strict=True):
        if isinstance(res, WorkflowInfo):
            if res.memo.get("tenant_id") == tenant_id:
                found.append(
                    (Location(cluster.name, ns, cluster.region, cluster.zone, tenant_id), res)
                )
        elif isinstance(res, ClusterUnavailable):
            unreachable.append(cluster.name)
        elif isinstance(res, MeridianError):
            continue  # not found there (or not ours): keep looking elsewhere
        elif isinstance(res, BaseException):
            raise res
    if found:
        found.sort(
            key=lambda f: (
                f[1].status == WorkflowExecutionStatus.RUNNING,
                f[1].start_time.timestamp() if f[1].start_time else 0.0,
            ),
            reverse=True,
        )
        return found[0]
    if unreachable:
        raise ClusterUnavailable(
            f"workflow {workflow_id} is not on any reachable cluster, and "
            f"{', '.join(sorted(set(unreachable)))} did not answer; retry later",
            cluster=",".join(sorted(set(unreachable))),
            may_have_reached=False,
        )
    raise WorkflowNotFound(
        f"workflow {workflow_id} not found for tenant {tenant_id}", workflow_id=workflow_id
    )
