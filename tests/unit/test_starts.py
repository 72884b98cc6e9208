"""The start path through the gateway seam: audit before effect, the in-flight failover
rule (a start refused before sending waits for the flip and lands on the standby; one
that may have reached its cluster is never re-sent), idempotency, refusals, and the
location cache the follow-ups use."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from router.config.runtime import ConfigController
from router.core.model import ClusterView, DataClass, Priority
from router.errors import (
    AuditUnavailable,
    ClusterUnavailable,
    NoHealthyTarget,
    WorkflowTypeNotServed,
)
from router.followups import Followups, Ref
from router.homes import HomeRefs
from router.starts import Starter, StartInput
from router.temporal.locator import LocationCache
from tests.helpers import default_doc
from tests.unit.seams import Audit, Gateway, Journal, Views, controller

ALL = frozenset(f"{r}-{x}" for r in ("us-east", "eu-west", "ap-southeast") for x in ("a", "b"))
PRIMARIES = {"us-east": "us-east-a", "eu-west": "eu-west-a", "ap-southeast": "ap-southeast-a"}


class Stack:
    def __init__(self, tmp: Path, doc: dict[str, Any] | None = None) -> None:
        self.journal = Journal()
        self.audit = Audit(self.journal)
        self.gateway = Gateway(self.journal)
        self.config: ConfigController = controller(doc or default_doc(), tmp, self.audit)
        self.views = Views(
            self.config.config.table,
            ClusterView(active=MappingProxyType(dict(PRIMARIES)), healthy=ALL),
        )
        self.locations = LocationCache()
        self.starter = Starter(self.config, self.views, self.gateway, self.audit, self.locations)
        self.followups = Followups(
            self.config, self.gateway, self.locations, HomeRefs((b"k" * 32,))
        )


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(tmp_path)


def inp(workflow_id: str = "wf-1", **kw: Any) -> StartInput:
    base: dict[str, Any] = {
        "workflow_type": "EchoWorkflow", "workflow_id": workflow_id, "args": ["x"],
        "args_size": 3, "tenant_id": "acme", "user_country": "DE", "user_subdivision": "",
        "data_class": DataClass.PII, "priority": Priority.NORMAL, "request_id": "",
    }  # fmt: skip
    return StartInput(**{**base, **kw})


async def test_decision_is_audited_before_the_start_and_the_outcome_before_the_reply(
    stack: Stack,
) -> None:
    res = await stack.starter.start(inp(), remaining=5.0)
    assert res.started and res.decision.cluster == "eu-west-a"
    assert stack.journal.kinds() == [
        "audit:route.decision", "temporal:start@eu-west-a", "audit:start.outcome",
    ]  # fmt: skip
    outcome = stack.journal.records("start.outcome")[0]
    assert outcome["decision_seq"] == res.decision_receipt.sequence if res.decision_receipt else 0
    assert outcome["outcome"] == "started" and outcome["run_id"] == res.run_id
    # The memo the start wrote names the tenant and where it went (read by follow-ups).
    run = stack.gateway.runs[("eu-west-a", "eu-west", "wf-1")]
    assert run.memo.tenant_id == "acme" and run.memo.region == "eu-west"
    assert run.memo.data_class is DataClass.PII and run.memo.residency_zone == "eu"


async def test_a_retry_returns_the_existing_run(stack: Stack) -> None:
    first = await stack.starter.start(inp(), remaining=5.0)
    again = await stack.starter.start(inp(), remaining=5.0)
    assert (again.started, again.run_id) == (False, first.run_id)
    assert [r["outcome"] for r in stack.journal.records("start.outcome")] == [
        "started", "existing",
    ]  # fmt: skip


async def test_another_tenants_id_is_taken_and_nothing_of_its_run_is_told(stack: Stack) -> None:
    """A duplicate start returns the existing run only to its own tenant: otherwise the
    caller would get its run id, a home reference, and this replica's cache entry."""
    from router.errors import WorkflowIdTaken, WorkflowNotFound

    mine = await stack.starter.start(inp(), remaining=5.0)
    with pytest.raises(WorkflowIdTaken) as info:
        await stack.starter.start(inp(tenant_id="initech"), remaining=5.0)
    assert mine.run_id not in info.value.message and "acme" not in info.value.message
    assert "wf-1 is already in use; choose another" in info.value.message
    assert stack.journal.records("start.outcome")[-1]["error"] == info.value.message
    with pytest.raises(WorkflowNotFound):  # no cache entry for initech either
        await stack.followups.signal(Ref("wf-1", "", "initech"), "s", [], 0, remaining=5)
    assert stack.gateway.runs[("eu-west-a", "eu-west", "wf-1")].signals == []


async def test_nothing_is_sent_without_a_decision_record(stack: Stack) -> None:
    stack.audit.fail = 1
    with pytest.raises(AuditUnavailable):
        await stack.starter.start(inp(), remaining=5.0)
    assert stack.journal.kinds() == [], "a start was sent without its audit record"


async def test_refused_before_sending_waits_for_the_flip_and_lands_on_the_standby(
    stack: Stack,
) -> None:
    """The moment between the primary being marked unhealthy and the flip: routing says
    "no healthy cluster", but the state machine has a healthy standby to move to. A
    start that was never sent waits for the flip instead of failing."""
    stack.gateway.failing["eu-west-a"] = "refused"
    task = asyncio.create_task(stack.starter.start(inp(), remaining=5.0))
    await asyncio.sleep(0.05)
    assert not task.done(), "it waits for the view to change"
    assert stack.views.nudged == ["eu-west-a"], "the refusal wakes the prober"
    # The prober marks the primary unhealthy; the flip is still to come.
    stack.views.expected.add("eu-west")
    stack.views.publish(healthy=ALL - {"eu-west-a"})
    await asyncio.sleep(0.05)
    assert not task.done(), "a flip is expected: no refusal in the meantime"
    stack.views.publish(active={**PRIMARIES, "eu-west": "eu-west-b"})
    res = await asyncio.wait_for(task, 5)
    assert res.decision.cluster == "eu-west-b" and res.decision.failed_over
    assert stack.journal.kinds() == [
        "audit:route.decision", "temporal:start@eu-west-a",
        "audit:route.decision", "temporal:start@eu-west-b", "audit:start.outcome",
    ]  # fmt: skip
    _, retry = stack.journal.records("route.decision")
    assert retry["retry_of_seq"] == 1 and retry["cluster"] == "eu-west-b"
    assert stack.journal.records("start.outcome")[0]["retried_from"] == "eu-west-a"
    assert ("eu-west-b", "eu-west", "wf-1") in stack.gateway.runs


async def test_refused_with_no_flip_coming_fails_at_once_and_says_why(stack: Stack) -> None:
    stack.gateway.failing["eu-west-a"] = "refused"
    task = asyncio.create_task(stack.starter.start(inp(), remaining=5.0))
    await asyncio.sleep(0.05)
    stack.views.publish(healthy=ALL - {"eu-west-a", "eu-west-b"})  # the whole region down
    with pytest.raises(ClusterUnavailable) as info:
        await asyncio.wait_for(task, 1)
    msg = info.value.message
    assert "no other compliant cluster is healthy" in msg and "safe to retry" in msg
    assert not info.value.may_have_reached
    assert stack.journal.records("start.outcome")[0]["outcome"] == "error"
    assert not any(e == ("temporal", "start@eu-west-b") for e in stack.journal.entries)


async def test_refused_and_nothing_changes_gives_up_at_the_deadline(stack: Stack) -> None:
    stack.gateway.failing["eu-west-a"] = "refused"
    with pytest.raises(ClusterUnavailable) as info:
        await stack.starter.start(inp(), remaining=0.2)
    assert "took over in time" in info.value.message


async def test_a_start_that_may_have_reached_its_cluster_is_never_resent(stack: Stack) -> None:
    stack.gateway.failing["eu-west-a"] = "timeout"
    stack.views.publish(active={**PRIMARIES, "eu-west": "eu-west-b"})  # even after a flip
    stack.views.publish(active=PRIMARIES)
    with pytest.raises(ClusterUnavailable) as info:
        await stack.starter.start(inp(), remaining=5.0)
    assert info.value.may_have_reached
    assert "workflow id wf-1: safe to retry with the same id" in info.value.message
    sent = [e for what, e in stack.journal.entries if what == "temporal"]
    assert sent == ["start@eu-west-a"]


async def test_regulated_data_never_leaves_its_zone_during_a_failover(stack: Stack) -> None:
    """Every cluster of the EU zone refuses; the US is healthy: the start is refused,
    never sent across the border."""
    stack.gateway.failing |= {"eu-west-a": "refused", "eu-west-b": "refused"}
    stack.views.publish(active={**PRIMARIES, "eu-west": "eu-west-b"}, healthy=ALL - {"eu-west-a"})
    with pytest.raises(ClusterUnavailable):
        await stack.starter.start(inp(), remaining=0.5)
    clusters = {e.split("@")[1] for what, e in stack.journal.entries if what == "temporal"}
    assert clusters <= {"eu-west-a", "eu-west-b"}


async def test_a_type_no_region_runs_is_refused_before_anything_is_sent(stack: Stack) -> None:
    with pytest.raises(WorkflowTypeNotServed) as info:
        await stack.starter.start(inp(workflow_type="NoSuchWorkflow"), remaining=5.0)
    assert "NoSuchWorkflow" in info.value.message and "eu-west" in info.value.message
    assert stack.journal.kinds() == ["audit:route.refusal"]
    with pytest.raises(WorkflowTypeNotServed):
        await stack.starter.explain(inp(workflow_type="NoSuchWorkflow"))


async def test_no_healthy_target_is_refused_and_audited(stack: Stack) -> None:
    stack.views.publish(healthy=ALL - {"eu-west-a", "eu-west-b"})
    with pytest.raises(NoHealthyTarget):
        await stack.starter.start(inp(), remaining=5.0)
    assert stack.journal.kinds() == ["audit:route.refusal"]


async def test_follow_ups_use_the_location_the_start_cached(stack: Stack) -> None:
    await stack.starter.start(inp(), remaining=5.0)
    stack.gateway.describes = 0
    loc, _ = await stack.followups.query(Ref("wf-1", "", "acme"), "getStatus", [], 0, remaining=5)
    assert loc.cluster == "eu-west-a" and stack.gateway.describes == 0, "no search, no describe"
    # Another tenant naming the same id: a cache miss, and the memo says it is not theirs.
    from router.errors import WorkflowNotFound

    with pytest.raises(WorkflowNotFound):
        await stack.followups.describe(Ref("wf-1", "", "globex"), remaining=5)
    assert stack.gateway.describes > 0
