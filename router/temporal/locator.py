"""Find a workflow's home cluster from its id alone.

Callers of Describe/Signal/Query/Cancel/GetResult name a workflow, not its routing
inputs. Each replica remembers where it started workflows (a bounded LRU); on a miss
(another replica started it, or a restart) ``search`` asks the clusters where it can be
(``router.followups`` decides which), in parallel, and trusts only the Meridian memo
stored with the run, so a tenant can never reach another tenant's workflow by guessing
its id.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from router.core.model import ClusterSpec, WorkflowStatus
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

    def get(self, workflow_id: str, tenant_id: str) -> Location | None:
        """Where ``workflow_id`` of ``tenant_id`` was seen; another tenant's entry is a
        miss (the search then decides, by the memo)."""
        loc = self._entries.get(workflow_id)
        if loc is None or loc.tenant_id != tenant_id:
            return None
        self._entries.move_to_end(workflow_id)
        return loc

    def put(self, workflow_id: str, loc: Location) -> None:
        self._entries[workflow_id] = loc
        self._entries.move_to_end(workflow_id)
        if len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, workflow_id: str) -> None:
        self._entries.pop(workflow_id, None)


# A (cluster, namespace) a search asks.
Pair = tuple[ClusterSpec, str]


def not_found(workflow_id: str, tenant_id: str) -> WorkflowNotFound:
    """The one answer for a workflow that is not there for this tenant, whatever the
    reason (absent, another tenant's, a home reference that does not open): the caller
    cannot tell them apart."""
    return WorkflowNotFound(
        f"workflow {workflow_id} not found for tenant {tenant_id}", workflow_id=workflow_id
    )


async def search(
    gateway: Gateway,
    pairs: Sequence[Pair],
    *,
    workflow_id: str,
    run_id: str,
    tenant_id: str,
    timeout: float,
) -> tuple[Location, WorkflowInfo]:
    """Describe ``workflow_id`` on every pair at once; keep the runs whose memo names
    ``tenant_id``; prefer a running one, then the latest started.

    NOT_FOUND only when every cluster asked answered; otherwise UNAVAILABLE naming
    exactly the clusters that could not be asked (the workflow may be on one of them).
    """
    results = await asyncio.gather(
        *(
            gateway.describe(Target(c.name, ns, workflow_id, run_id), timeout=timeout)
            for c, ns in pairs
        ),
        return_exceptions=True,
    )
    found: list[tuple[Location, WorkflowInfo]] = []
    unreachable: dict[str, str] = {}
    for (cluster, ns), res in zip(pairs, results, strict=True):
        if isinstance(res, WorkflowInfo):
            if res.memo is not None and res.memo.tenant_id == tenant_id:
                found.append(
                    (Location(cluster.name, ns, cluster.region, cluster.zone, tenant_id), res)
                )
        elif isinstance(res, ClusterUnavailable):
            unreachable.setdefault(cluster.name, res.message)
        elif isinstance(res, MeridianError):
            continue  # the cluster answered: not there (or not this tenant's)
        elif isinstance(res, BaseException):
            raise res
    if found:
        found.sort(
            key=lambda f: (
                f[1].status is WorkflowStatus.RUNNING,
                f[1].start_time.timestamp() if f[1].start_time else 0.0,
            ),
            reverse=True,
        )
        return found[0]
    if unreachable:
        names = sorted(unreachable)
        answered = sorted({c.name for c, _ in pairs} - unreachable.keys())
        raise ClusterUnavailable(
            f"workflow {workflow_id} was not found on {_list(answered) or 'any cluster'}, "
            f"and {_list(names)} could not be asked ("
            + "; ".join(unreachable[n] for n in names)
            + f"): it may be there. Ask again once {_list(names)} "
            f"{'answers' if len(names) == 1 else 'answer'}",
            cluster=",".join(names),
            may_have_reached=False,
        )
    raise not_found(workflow_id, tenant_id)


def _list(names: list[str]) -> str:
    return ", ".join(names)
