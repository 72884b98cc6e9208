"""What SREs ask of a router (the RoutingAdmin service): the topology as this replica
sees it, and flips of a region's active cluster, with a dry run that shows their impact
(which representative requests would route elsewhere, and how many workflows run on
the cluster being left, counted from that cluster's own visibility).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from router.audit.checkpoint import CheckpointStatus
from router.audit.ship import ShipStatus
from router.clusters import ClusterState
from router.config.runtime import ConfigController
from router.config.settings import ResolvedConfig
from router.core.authz import Principal
from router.core.failover import FlipRefused, FlipRequested, RegionState
from router.core.health import ProbeState
from router.core.impact import Impact, route_changes
from router.core.model import ClusterView
from router.deadlines import budget
from router.errors import ConfigError, MeridianError
from router.live import LiveStatus
from router.temporal.gateway import Gateway


@dataclass(frozen=True, slots=True)
class FlipOutcome:
    before: RegionState
    after: RegionState
    dry_run: bool
    # Dry runs only: the rule that would refuse the flip, and why ("" when it would go).
    refused_rule: str = ""
    refused_message: str = ""
    impact: Impact | None = None


class Admin:
    def __init__(
        self,
        config: ConfigController,
        clusters: ClusterState,
        gateway: Gateway,
        live_status: Callable[[], LiveStatus] | None = None,
        *,
        checkpoints: Callable[[], CheckpointStatus] | None = None,
    ) -> None:
        self._config = config
        self._clusters = clusters
        self._gateway = gateway
        self._live_status = live_status
        self._checkpoints = checkpoints
        # The audit chain's shipping off the box, when it is on (set by `serve`).
        self.shipping: Callable[[], ShipStatus] | None = None

    # -- what the status view shows -------------------------------------------------

    @property
    def config(self) -> ResolvedConfig:
        return self._config.config

    @property
    def states(self) -> Mapping[str, RegionState]:
        return self._clusters.states

    @property
    def probes(self) -> Mapping[str, ProbeState]:
        return self._clusters.probes

    @property
    def last_rejected(self) -> tuple[float, ConfigError] | None:
        return self._config.last_rejected

    @property
    def config_pending(self) -> str:
        return self._config.pending_reason

    def live(self) -> LiveStatus | None:
        return self._live_status() if self._live_status is not None else None

    def checkpoints(self) -> CheckpointStatus | None:
        """The audit chain's signed checkpoints and witnesses (None: checkpoints off)."""
        return self._checkpoints() if self._checkpoints is not None else None

    # -- flips -------------------------------------------------------------------------

    async def set_active_cluster(
        self,
        *,
        region: str,
        cluster: str,
        reason: str,
        force: bool,
        dry_run: bool,
        actor: Principal,
        on_behalf_of: str = "",
        remaining: float | None,
    ) -> FlipOutcome:
        """``actor``: the authenticated principal (it is what the audit names);
        ``on_behalf_of``: free text an SRE may add (kept beside it, never instead)."""
        req = FlipRequested(
            target=cluster, actor=actor.name, reason=reason, force=force,
            auth=actor.method.value, on_behalf_of=on_behalf_of,
        )  # fmt: skip
        if not dry_run:
            before, after = await self._clusters.flip(region, req)
            return FlipOutcome(before, after, dry_run=False)
        before, after, events = self._clusters.preview(region, req)
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
        table = self._config.config.table
        view = self._clusters.view
        hypothetical = ClusterView(
            active=MappingProxyType({**view.active, before.region: after.active}),
            healthy=view.healthy,
        )
        changes = route_changes(table, view, hypothetical)
        leaving = before.active
        spec = table.clusters[leaving]
        timeout = budget(remaining, self._config.config.temporal.call_timeout)
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
