"""Test doubles for the router's seams, so the start path, the follow-ups and the config
controller are unit-tested without a server (the integration tests run the same code
against real Temporal dev servers).

``Gateway`` stands in for ``router.temporal.gateway.Gateway``: workflows live in a dict
per (cluster, namespace); clusters can be made to refuse connections (nothing sent) or
time out (maybe sent). ``Journal`` records, in order, every audit append and every call
to Temporal, which is how the tests check audit-before-effect.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from router.audit import Receipt
from router.codec import FileKeyProvider, new_ring
from router.config import ResolvedConfig, compile_config
from router.config.layers import Layer
from router.config.runtime import ConfigController
from router.config.sources import ConfigSources
from router.core.memo import WorkflowMemo
from router.core.model import ClusterView, Decision, RoutingTable, WorkflowStatus
from router.errors import AuditUnavailable, ClusterUnavailable, WorkflowNotFound
from router.temporal.gateway import ResultOutcome, StartOutcome, Target, WorkflowInfo


@dataclass
class Journal:
    """Audit records and Temporal calls, in the order they happened."""

    entries: list[tuple[str, Any]] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [
            f"audit:{e['kind']}" if what == "audit" else f"temporal:{e}" for what, e in self.entries
        ]

    def records(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            dict(e) for what, e in self.entries if what == "audit" and kind in (None, e["kind"])
        ]


class Audit:
    """An audit sink that journals; ``fail`` makes the next appends raise."""

    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal or Journal()
        self.seq = 0
        self.fail = 0

    async def append(self, record: Mapping[str, Any]) -> Receipt | None:
        if self.fail:
            self.fail -= 1
            raise AuditUnavailable("audit log unavailable: test")
        self.seq += 1
        self.journal.entries.append(("audit", dict(record)))
        return Receipt(self.seq, f"h{self.seq}", "audit-0000000000000001.jsonl")


@dataclass
class Run:
    workflow_type: str
    run_id: str
    memo: WorkflowMemo
    status: WorkflowStatus = WorkflowStatus.RUNNING
    signals: list[str] = field(default_factory=list)


class Gateway:
    def __init__(self, journal: Journal | None = None) -> None:
        self.journal = journal or Journal()
        self.runs: dict[tuple[str, str, str], Run] = {}
        # cluster -> how it fails: "refused" (nothing sent) or "timeout" (maybe sent).
        self.failing: dict[str, str] = {}
        self.describes = 0

    def _fail(self, cluster: str, what: str) -> None:
        mode = self.failing.get(cluster)
        if mode == "refused":
            raise ClusterUnavailable(
                f"cluster {cluster} refused the connection ({what} was not sent)",
                cluster=cluster,
                may_have_reached=False,
            )
        if mode == "timeout":
            raise ClusterUnavailable(
                f"cluster {cluster} did not answer {what} in time",
                cluster=cluster,
                may_have_reached=True,
            )

    def _run(self, t: Target) -> Run:
        run = self.runs.get((t.cluster, t.namespace, t.workflow_id))
        if run is None or (t.run_id and t.run_id != run.run_id):
            raise WorkflowNotFound(f"workflow {t.workflow_id} not found", workflow_id=t.workflow_id)
        return run

    async def start(
        self,
        decision: Decision,
        *,
        workflow_id: str,
        workflow_type: str,
        args: Sequence[Any],
        memo: WorkflowMemo,
        request_id: str,
        timeout: float,
    ) -> StartOutcome:
        self.journal.entries.append(("temporal", f"start@{decision.cluster}"))
        self._fail(decision.cluster, "StartWorkflow")
        key = (decision.cluster, decision.namespace, workflow_id)
        if key in self.runs:
            return StartOutcome(self.runs[key].run_id, started=False)
        self.runs[key] = Run(workflow_type, f"run-{len(self.runs) + 1}", memo)
        return StartOutcome(self.runs[key].run_id, started=True)

    async def describe(self, t: Target, *, timeout: float) -> WorkflowInfo:
        self.describes += 1
        self.journal.entries.append(("temporal", f"describe@{t.cluster}"))
        self._fail(t.cluster, "DescribeWorkflow")
        run = self._run(t)
        return WorkflowInfo(
            workflow_id=t.workflow_id, run_id=run.run_id, workflow_type=run.workflow_type,
            status=run.status, task_queue="q", start_time=None, close_time=None,
            history_length=1, memo=run.memo,
        )  # fmt: skip

    async def signal(self, t: Target, name: str, args: Sequence[Any], *, timeout: float) -> None:
        self.journal.entries.append(("temporal", f"signal@{t.cluster}"))
        self._fail(t.cluster, "SignalWorkflow")
        run = self._run(t)
        if run.status is not WorkflowStatus.RUNNING:
            # What Temporal answers for a closed run: NOT_FOUND "already completed".
            raise WorkflowNotFound("workflow execution already completed", workflow_id="x")
        run.signals.append(name)

    async def query(self, t: Target, name: str, args: Sequence[Any], *, timeout: float) -> Any:
        self.journal.entries.append(("temporal", f"query@{t.cluster}"))
        self._fail(t.cluster, "QueryWorkflow")
        return {"status": self._run(t).status.value}

    async def cancel(self, t: Target, *, timeout: float) -> None:
        self.journal.entries.append(("temporal", f"cancel@{t.cluster}"))
        self._fail(t.cluster, "CancelWorkflow")
        self._run(t).status = WorkflowStatus.CANCELED

    async def result(self, t: Target, *, timeout: float) -> ResultOutcome:
        self._fail(t.cluster, "GetWorkflowResult")
        return ResultOutcome(self._run(t).status)

    async def count_running(self, cluster: str, namespace: str, *, timeout: float) -> int:
        self._fail(cluster, "CountWorkflows")
        return sum(
            1
            for (c, ns, _), r in self.runs.items()
            if (c, ns) == (cluster, namespace) and r.status is WorkflowStatus.RUNNING
        )


class Views:
    """The cluster state as the start path sees it, driven by the test."""

    def __init__(self, table: RoutingTable, view: ClusterView) -> None:
        self.table = table
        self.view = view
        self.expected: set[str] = set()
        self.nudged: list[str] = []
        self._changed = asyncio.Event()

    def routing(self) -> tuple[RoutingTable, ClusterView]:
        return self.table, self.view

    def failover_expected(self, region: str) -> bool:
        return region in self.expected

    async def wait_change(self, timeout: float) -> bool:
        changed = self._changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def nudge(self, cluster: str) -> None:
        self.nudged.append(cluster)

    def publish(
        self, *, active: Mapping[str, str] | None = None, healthy: frozenset[str] | None = None
    ) -> None:
        self.view = ClusterView(
            active=MappingProxyType(dict(active if active is not None else self.view.active)),
            healthy=healthy if healthy is not None else self.view.healthy,
        )
        self._changed.set()
        self._changed = asyncio.Event()


def keys_for(directory: Path, config: ResolvedConfig) -> FileKeyProvider:
    provider = FileKeyProvider(directory)
    for region in config.table.regions:
        if not provider.path(region).exists():
            provider.save(new_ring(region))
    return provider


def controller(doc: dict[str, Any], keys_dir: Path, audit: Audit, **kw: Any) -> ConfigController:
    """A config controller over one in-memory layer (``doc``), with key rings made for
    every region of it."""
    sources = ConfigSources(paths=(), files=(Layer("test", doc),))
    config = compile_config(doc, source="test")
    return ConfigController(sources, config, keys=keys_for(keys_dir, config), audit=audit, **kw)
