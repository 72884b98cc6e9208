"""Histories recorded under earlier code replay under the current code (temporalio's
Replayer, the real sandbox): a running v1 contact sync survives the deploy of v2. The
fixtures are written by ``scripts/record_histories.py`` (see its docstring).

The negative case proves the test has teeth: v2 without its ``workflow.patched`` guard
(the new activity type unconditionally) fails to replay the same histories with a
non-determinism error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner
from temporalio.workflow import NondeterminismError

from regions.booking import PropertyBookingWorkflow
from regions.contact_sync import SYNC_CHUNK_V2, ContactSyncWorkflow

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "histories"
CONTACT_SYNC_V1 = sorted(FIXTURES.glob("contact_sync_v1_run*.json"))
BOOKINGS = sorted(FIXTURES.glob("booking_*.json"))


def history(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def activity_types(path: Path) -> list[str]:
    events = json.loads(path.read_text())["events"]
    return [
        e["activityTaskScheduledEventAttributes"]["activityType"]["name"]
        for e in events
        if e["eventType"] == "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED"
    ]


def test_fixtures_are_v1_histories_with_continue_as_new() -> None:
    assert len(CONTACT_SYNC_V1) >= 2, "run scripts/record_histories.py"
    scheduled = [t for path in CONTACT_SYNC_V1 for t in activity_types(path)]
    assert "syncContactChunk" in scheduled and SYNC_CHUNK_V2 not in scheduled
    first = json.loads(CONTACT_SYNC_V1[0].read_text())["events"]
    assert first[-1]["eventType"] == "EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW"


@pytest.mark.parametrize("path", CONTACT_SYNC_V1 + BOOKINGS, ids=lambda p: p.stem)
async def test_recorded_history_replays_under_current_code(path: Path) -> None:
    replayer = Replayer(workflows=[ContactSyncWorkflow, PropertyBookingWorkflow])
    result = await replayer.replay_workflow(history(path), raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


@workflow.defn(name="ContactSyncWorkflow")
class UnguardedV2(ContactSyncWorkflow):
    """v2 as it must not be written: the new activity type without the patch."""

    @workflow.run
    async def run(self, params: dict[str, Any]) -> dict[str, Any]:
        return await super().run(params)

    def _chunk_activity(self) -> str:
        return SYNC_CHUNK_V2


@pytest.mark.parametrize("path", CONTACT_SYNC_V1, ids=lambda p: p.stem)
async def test_v2_without_the_patch_breaks_replay(path: Path) -> None:
    replayer = Replayer(workflows=[UnguardedV2], workflow_runner=UnsandboxedWorkflowRunner())
    result = await replayer.replay_workflow(history(path), raise_on_replay_failure=False)
    assert isinstance(result.replay_failure, NondeterminismError), result.replay_failure
