"""What the router believes about its clusters, published as one immutable snapshot.

``ClusterState`` joins the prober (``router.temporal.health``: which clusters answer)
and the failover controller (``router.failover``: each region's active cluster) into a
``ClusterView``, and publishes it together with the routing table it belongs to
(``routing()``), so a request is never routed on a view of one config and a table of
another. It wakes whoever waits for a change.

The view shows health as the failover state machine has seen it, not as the prober
sees it this instant: the prober's events are consumed one at a time, each fed to the
state machine (which may flip, audited) before the view is rebuilt. So on the replica
that decides flips, "active cluster unhealthy" and the flip to a healthy standby reach
routing together. Where a flip is still to come (a follower waiting for the leader's
flip through Consul, or a flip waiting on its audit record), ``failover_expected`` says
so, and the start path waits for it instead of refusing (``router.starts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from types import MappingProxyType

from router import metrics
from router.config.runtime import RuntimeConfig
from router.config.settings import ResolvedConfig
from router.core.failover import (
    AuditEvent,
    Flip,
    FlipRequested,
    RegionState,
    failover_expected,
)
from router.core.health import ProbeState
from router.core.model import ClusterView, RoutingTable
from router.failover import FailoverController
from router.temporal.health import HealthMonitor
from router.temporal.pool import ClientPool

log = logging.getLogger(__name__)


def _cluster_labels(state: ClusterState) -> dict[str, dict[str, str]]:
    return {
        c.name: {"cluster": c.name, "region": c.region, "zone": c.zone}
        for c in state._table.clusters.values()
    }


def _healthy(state: ClusterState) -> metrics.Reading:
    healthy = state.view.healthy
    return [(1.0 if n in healthy else 0.0, lab) for n, lab in _cluster_labels(state).items()]


def _active(state: ClusterState) -> metrics.Reading:
    active = set(state.view.active.values())
    return [(1.0 if n in active else 0.0, lab) for n, lab in _cluster_labels(state).items()]


def _failed_over(state: ClusterState) -> metrics.Reading:
    return [
        (1.0 if s.failed_over else 0.0, {"region": r, "zone": s.zone})
        for r, s in state.states.items()
    ]


def _failures(state: ClusterState) -> metrics.Reading:
    probes = state.probes
    return [
        (float(probes[n].failures) if n in probes else 0.0, lab)
        for n, lab in _cluster_labels(state).items()
    ]


_GAUGES = {
    "meridian_cluster_healthy": _healthy,
    "meridian_cluster_active": _active,
    "meridian_cluster_failed_over": _failed_over,
    "meridian_cluster_consecutive_failures": _failures,
}


class ClusterState:
    def __init__(
        self,
        pool: ClientPool,
        config: ResolvedConfig,
        failover: FailoverController,
        *,
        tick_interval: float = 1.0,
    ) -> None:
        # The prober reports into a queue (not a callback into this object): its events
        # are consumed in order by one task, and no object refers back to this one.
        events: asyncio.Queue[tuple[str, ProbeState]] = asyncio.Queue()
        self._events = events
        self._health = HealthMonitor(
            pool, config.health, on_change=lambda name, probe: events.put_nowait((name, probe))
        )
        self._failover = failover
        self._tick_interval = tick_interval
        self._tasks: list[asyncio.Task[None]] = []
        self._table = config.table
        self._view = ClusterView(active=MappingProxyType({}), healthy=frozenset())
        self._changed = asyncio.Event()
        self._publish()
        for name, read in _GAUGES.items():
            metrics.watch(name, self, read)

    # -- reading -------------------------------------------------------------------

    @property
    def view(self) -> ClusterView:
        return self._view

    def routing(self) -> tuple[RoutingTable, ClusterView]:
        """The table and the view of it, published together."""
        return self._table, self._view

    @property
    def states(self) -> Mapping[str, RegionState]:
        """Each region's failover state (active cluster, mode, last flip)."""
        return self._failover.states

    @property
    def probes(self) -> Mapping[str, ProbeState]:
        return self._health.states

    @property
    def latency(self) -> dict[str, float]:
        """Each cluster's last probe duration, seconds."""
        return self._health.latency

    def failover_expected(self, region: str) -> bool:
        """A flip of ``region`` to a healthy standby is imminent (see the core's rule)."""
        state = self._failover.states.get(region)
        return state is not None and failover_expected(state)

    async def wait_change(self, timeout: float) -> bool:
        """Wait until the view changes (True) or ``timeout`` passes (False)."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
            return True
        return False

    def nudge(self, cluster: str) -> None:
        """A request just failed against ``cluster``: probe it now."""
        self._health.nudge(cluster)

    # -- lifecycle -----------------------------------------------------------------

    async def apply_config(self, runtime: RuntimeConfig) -> None:
        """Subscriber of the config controller: track exactly the new config's
        clusters and regions (idempotent: a retried change is applied again)."""
        config = runtime.config
        await self._failover.sync(config.table)
        # Table and view together, with no await between: routing never sees one
        # config's table with another's active clusters.
        self._table = config.table
        self._publish()
        self._health.sync(list(config.table.clusters.values()), config.health)
        for name, probe in self._health.states.items():
            await self._observe(name, probe)
        self._publish()

    async def start(self, *, first_probe_timeout: float = 3.0) -> None:
        """Probe every cluster once and let the failover state machine act on what it
        saw, so the first request is routed on evidence; then follow the prober."""
        await self._health.wait_first_round(first_probe_timeout)
        while not self._events.empty():
            await self._observe(*self._events.get_nowait())
        self._publish()
        self._tasks = [
            asyncio.create_task(self._follow_health(), name="cluster-health"),
            asyncio.create_task(self._ticks(), name="failover-ticks"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._health.close()

    # -- changes -------------------------------------------------------------------

    async def adopt(self, region: str, flip: Flip) -> None:
        """A flip another replica decided (``router.live`` follows the shared store)."""
        try:
            await self._failover.adopt(region, flip)
        finally:
            self._publish()

    def preview(
        self, region: str, req: FlipRequested
    ) -> tuple[RegionState, RegionState, tuple[AuditEvent, ...]]:
        """A dry run of an SRE flip: nothing audited, nothing changed."""
        return self._failover.preview(region, req)

    async def flip(self, region: str, req: FlipRequested) -> tuple[RegionState, RegionState]:
        """An SRE flip, through the state machine's rules; audited either way."""
        try:
            return await self._failover.request(region, req)
        finally:
            self._publish()

    async def _observe(self, cluster: str, probe: ProbeState) -> None:
        if probe.healthy is None:
            return
        try:
            await self._failover.observe(cluster, probe.healthy, probe.last_error)
        except Exception:
            # E.g. the audit log or the state file is unavailable: no flip without its
            # record. The tick reconciles with the prober and tries again.
            log.exception("failover: could not act on %s's health; the tick retries", cluster)

    async def _follow_health(self) -> None:
        while True:
            cluster, probe = await self._events.get()
            await self._observe(cluster, probe)
            self._publish()

    async def _ticks(self) -> None:
        """Time-based rules (automatic failback) and reconciliation with the prober."""
        while True:
            await asyncio.sleep(self._tick_interval)
            health = {
                name: (bool(p.healthy), p.last_error)
                for name, p in self._health.states.items()
                if p.healthy is not None
            }
            try:
                await self._failover.tick(health)
            except Exception:
                log.exception("failover tick failed; the next one tries again")
            self._publish()

    def _publish(self) -> None:
        """Publish the active clusters and the healthy set, as the failover state
        machine has seen them, as one new immutable view (with the prober's reason for
        each cluster it shows unhealthy); wake whoever waits."""
        states = self._failover.states
        healthy = frozenset(c for s in states.values() for c, up in s.health.items() if up is True)
        why = {
            name: probe.last_error
            for name, probe in self._health.states.items()
            if name in self._table.clusters and name not in healthy and probe.last_error
        }
        view = ClusterView(
            active=MappingProxyType({r: s.active for r, s in states.items()}),
            healthy=healthy,
            why_unhealthy=MappingProxyType(why),
        )
        if view == self._view:
            return
        self._view = view
        self._changed.set()
        self._changed = asyncio.Event()
