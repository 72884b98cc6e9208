"""Reference workflows hosted by every regional worker.

``DataProcessingWorkflow`` is the seed's data-processing workflow: it processes
``items`` records one activity at a time, exposes live progress through the
``getStatus`` and ``getProgress`` queries, and can be paused and resumed by signal.
``EchoWorkflow`` returns its argument at once; it is the cheapest possible workflow,
for smoke tests and benchmarks.

The reference workloads (``ContactSyncWorkflow``, ``PropertyBookingWorkflow``) live in
``regions.contact_sync`` and ``regions.booking``; their activities, which alone touch the
region's database, in ``regions.activities``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow

from regions.booking import PropertyBookingWorkflow
from regions.contact_sync import ContactSyncWorkflow


@dataclass(frozen=True)
class WorkerIdentity:
    region: str
    cluster: str


class RegionalActivities:
    """Activities that report where they ran, so a test can prove residency end to end."""

    def __init__(self, identity: WorkerIdentity) -> None:
        self.identity = identity

    @activity.defn(name="processRecord")
    async def process_record(self, index: int, delay_ms: int) -> dict[str, Any]:
        if delay_ms > 0:
            await asyncio.sleep(delay_ms / 1000)
        return {"index": index, "region": self.identity.region, "cluster": self.identity.cluster}


@workflow.defn(name="DataProcessingWorkflow")
class DataProcessingWorkflow:
    def __init__(self) -> None:
        self._status = "PENDING"
        self._processed = 0
        self._total = 0
        self._paused = False

    @workflow.run
    async def run(self, params: dict[str, Any] | None = None) -> dict[str, Any]:
        params = params or {}
        self._total = max(0, int(params.get("items", 10)))
        delay_ms = max(0, int(params.get("delay_ms", 100)))
        self._status = "RUNNING"
        where: dict[str, Any] = {}
        for i in range(self._total):
            if self._paused:
                self._status = "PAUSED"
                await workflow.wait_condition(lambda: not self._paused)
                self._status = "RUNNING"
            where = await workflow.execute_activity(
                "processRecord",
                args=[i, delay_ms],
                start_to_close_timeout=timedelta(seconds=30),
                result_type=dict,
            )
            self._processed += 1
        self._status = "COMPLETED"
        return {
            "processed": self._processed,
            "total": self._total,
            "region": where.get("region", ""),
            "cluster": where.get("cluster", ""),
            "marker": params.get("marker", ""),
        }

    @workflow.query(name="getStatus")
    def get_status(self) -> str:
        return self._status

    @workflow.query(name="getProgress")
    def get_progress(self) -> dict[str, Any]:
        percent = 100.0 if self._total == 0 else round(100 * self._processed / self._total, 1)
        return {"processed": self._processed, "total": self._total, "percent": percent}

    @workflow.signal(name="pause")
    def pause(self) -> None:
        self._paused = True

    @workflow.signal(name="resume")
    def resume(self) -> None:
        self._paused = False


@workflow.defn(name="EchoWorkflow")
class EchoWorkflow:
    @workflow.run
    async def run(self, value: Any = None) -> Any:
        return value


WORKFLOWS: tuple[type, ...] = (
    DataProcessingWorkflow,
    EchoWorkflow,
    ContactSyncWorkflow,
    PropertyBookingWorkflow,
)
WORKFLOW_TYPES: tuple[str, ...] = (
    "DataProcessingWorkflow",
    "EchoWorkflow",
    "ContactSyncWorkflow",
    "PropertyBookingWorkflow",
)
