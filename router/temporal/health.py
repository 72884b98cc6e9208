"""Active health checks of every cluster, Envoy-style (interval, timeout, thresholds,
jitter), feeding the pure threshold logic in ``router.core.health``.

A probe is ``check_health(timeout=...)`` plus ``DescribeNamespace`` of each namespace
the cluster must serve, both bounded: a hung server (SIGSTOP) fails the probe by timing
out exactly as a dead one (SIGKILL) fails it by refusing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from datetime import timedelta

from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

from router import metrics
from router.config.settings import HealthSettings
from router.core.health import ProbeState, Thresholds, observe
from router.core.model import ClusterSpec
from router.temporal.errors import connect_failure
from router.temporal.pool import ClientPool

log = logging.getLogger(__name__)


class HealthMonitor:
    def __init__(
        self,
        pool: ClientPool,
        settings: HealthSettings,
        on_change: Callable[[str, ProbeState], None] = lambda name, state: None,
    ) -> None:
        self._pool = pool
        self._settings = settings
        # Called on every change of a cluster's thresholded health (first probe included).
        self._on_change = on_change
        self._states: dict[str, ProbeState] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._specs: dict[str, ClusterSpec] = {}
        self._probed: dict[str, asyncio.Event] = {}
        self._wake: dict[str, asyncio.Event] = {}
        # The last probe's duration per cluster, seconds (for the status page).
        self.latency: dict[str, float] = {}

    @property
    def states(self) -> Mapping[str, ProbeState]:
        return dict(self._states)

    def healthy(self) -> frozenset[str]:
        return frozenset(name for name, s in self._states.items() if s.healthy)

    def sync(self, clusters: list[ClusterSpec], settings: HealthSettings) -> None:
        """Probe exactly these clusters; restart probers whose spec or settings changed."""
        restart_all = settings != self._settings
        self._settings = settings
        wanted = {c.name: c for c in clusters}
        for name in list(self._tasks):
            if restart_all or name not in wanted or wanted[name] != self._specs[name]:
                self._tasks.pop(name).cancel()
                if name not in wanted:
                    self._states.pop(name, None)
                    self._specs.pop(name, None)
        for name, spec in wanted.items():
            if name not in self._tasks:
                self._specs[name] = spec
                self._states.setdefault(name, ProbeState())
                self._probed.setdefault(name, asyncio.Event())
                self._wake.setdefault(name, asyncio.Event())
                self._tasks[name] = asyncio.create_task(self._run(spec), name=f"probe-{name}")

    def nudge(self, cluster: str) -> None:
        """Probe ``cluster`` now instead of at its next interval: a request just failed
        against it (passive evidence; the probes confirm or clear it)."""
        wake = self._wake.get(cluster)
        if wake is not None:
            wake.set()

    async def wait_first_round(self, timeout: float) -> None:
        """Wait until every cluster has been probed once (or ``timeout`` passes), so a
        router that just started routes on evidence, not on assumptions."""
        waits = [e.wait() for name, e in self._probed.items() if name in self._tasks]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits), timeout)

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def probe(self, spec: ClusterSpec) -> tuple[bool, str]:
        timeout = self._settings.timeout
        # A renewed certificate, key or API key file is picked up here (a stat each).
        await self._pool.refresh(spec.name)
        problem = self._pool.problem(spec.name)
        if problem:
            return (False, problem)
        service = self._pool.service(spec.name)

        async def check() -> str:
            if not await service.check_health(timeout=timedelta(seconds=timeout)):
                return "health check answered NOT_SERVING"
            for ns in spec.namespaces:
                await service.workflow_service.describe_namespace(
                    DescribeNamespaceRequest(namespace=ns),
                    retry=False,
                    timeout=timedelta(seconds=timeout),
                )
            return ""

        try:
            error = await asyncio.wait_for(check(), timeout + 0.05)
        except TimeoutError:
            error = f"no answer within {timeout * 1000:.0f} ms"
        except Exception as exc:  # any failure to answer is a failed probe
            error = _short(exc)
        return (not error, error)

    async def _run(self, spec: ClusterSpec) -> None:
        t = Thresholds(self._settings.unhealthy_threshold, self._settings.healthy_threshold)
        labels = {"cluster": spec.name, "region": spec.region, "zone": spec.zone}
        while True:
            t0 = time.perf_counter()
            ok, error = await self.probe(spec)
            took = time.perf_counter() - t0
            self.latency[spec.name] = took
            metrics.probe_duration.record(took, {**labels, "ok": "true" if ok else "false"})
            before = self._states.get(spec.name, ProbeState())
            after = observe(before, ok, error, t)
            self._states[spec.name] = after
            self._probed[spec.name].set()
            if after.healthy != before.healthy:
                level = logging.INFO if after.healthy else logging.WARNING
                state = "healthy" if after.healthy else f"unhealthy ({after.last_error})"
                log.log(level, "cluster %s at %s is %s", spec.name, spec.endpoint, state)
                self._on_change(spec.name, after)
            # After a failure, confirm fast: a dead cluster is declared within
            # (threshold - 1) x failure_interval of its first failed probe.
            pause = self._settings.interval if ok else self._settings.failure_interval
            pause += random.uniform(0, self._settings.jitter)
            wake = self._wake[spec.name]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), pause)
            wake.clear()


def _short(exc: BaseException) -> str:
    reason = connect_failure(exc)
    if reason is not None:
        return reason
    text = str(exc)
    if "Connection refused" in text or "tcp connect error" in text:
        return "connection refused"
    if "Timeout expired" in text:
        return "timed out"
    return f"{type(exc).__name__}: {text[:200]}"
