"""The application: one router replica's parts, wired once.

::

    ConfigController ──(subscribers)──> ClientPool, ClusterState
    Starter    (StartWorkflow, ExplainRoute)   route → audit → send → in-flight failover
    Followups  (Describe/Signal/Query/Cancel/Result)  locate → operate
    Admin      (GetTopology, SetActiveCluster)
    all three ──> TemporalGateway (the Gateway seam) ──> ClientPool ──> clusters

Nothing here decides or converts anything: the gRPC servicers (``router.api``) call the
three services; the CLI's ``serve`` and ``dev`` build a ``Router`` and, with Consul, a
``router.live.Live`` beside it that follows the shared config and flips.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence

from router import metrics
from router.admin import Admin
from router.audit import AuditSink
from router.audit.checkpoint import Checkpointer
from router.clusters import ClusterState
from router.codec import KeyProvider
from router.config.runtime import ConfigController, RuntimeConfig
from router.config.settings import ResolvedConfig
from router.config.sources import ConfigSources
from router.errors import ConfigError
from router.failover import FailoverController, FlipStore
from router.followups import Followups
from router.homes import HomeRefs
from router.live import LiveStatus
from router.starts import Starter
from router.temporal.gateway import TemporalGateway
from router.temporal.locator import LocationCache
from router.temporal.pool import ClientPool


class Router:
    def __init__(
        self,
        sources: ConfigSources,
        config: ResolvedConfig,
        keys: KeyProvider,
        *,
        audit: AuditSink,
        store: FlipStore | None = None,
        authority: Callable[[], bool] = lambda: True,
        live_status: Callable[[], LiveStatus] | None = None,
        early_rejections: Sequence[ConfigError] = (),
        homes: HomeRefs | None = None,
        checkpointer: Checkpointer | None = None,
    ) -> None:
        """``config``: what ``sources`` resolve to now (the caller opened the audit log
        with its settings); ``early_rejections``: changes rejected before the audit log
        was open (audited on start); ``homes``: the replicas' shared home-reference key
        (None: a key of this process alone, for in-process use); ``checkpointer``: the
        audit log's signed checkpoints (the caller starts and closes it with the log),
        which also signs receipts."""
        self._early_rejections = tuple(early_rejections)
        self.audit = audit
        self.config = ConfigController(sources, config, keys=keys, audit=audit)
        self.pool = ClientPool(connect_timeout=config.temporal.connect_timeout)
        self.gateway = TemporalGateway(self.pool)
        failover = FailoverController(config.table, audit, store=store, authority=authority)
        self.clusters = ClusterState(self.pool, config, failover)
        locations = LocationCache()
        self.starts = Starter(self.config, self.clusters, self.gateway, audit, locations)
        self.followups = Followups(
            self.config,
            self.gateway,
            locations,
            homes if homes is not None else HomeRefs((secrets.token_bytes(32),)),
        )
        self.checkpointer = checkpointer
        self.admin = Admin(
            self.config, self.clusters, self.gateway, live_status,
            checkpoints=checkpointer.status if checkpointer is not None else None,
        )  # fmt: skip
        pool = self.pool

        async def sync_pool(runtime: RuntimeConfig) -> None:
            # A closure over the pool, not a bound method: no Router <-> controller cycle.
            await pool.sync(
                runtime.config.table.clusters.values(),
                runtime.converters,
                tls=runtime.config.cluster_tls,
                connect_timeout=runtime.config.temporal.connect_timeout,
            )

        self.config.subscribe(sync_pool)
        self.config.subscribe(self.clusters.apply_config)
        if live_status is None:  # one router, no peers: it is its own health authority
            metrics.watch("meridian_leader", self, lambda _: [(1.0, {"replica": "local"})])

    async def start(self, *, first_probe_timeout: float = 3.0) -> None:
        """Connect (lazily) to every cluster, probe each once and let the failover state
        machine act on what it saw, so the first request is routed on evidence."""
        await self.config.start(self._early_rejections)
        await self.clusters.start(first_probe_timeout=first_probe_timeout)

    async def close(self) -> None:
        await self.clusters.close()
        await self.config.close()
