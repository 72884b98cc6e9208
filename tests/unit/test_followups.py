"""Follow-ups through the gateway seam: a closed run is told apart from a missing one,
an unknown id is NOT_FOUND only when every cluster where the tenant's workflows can live
answered (and otherwise the clusters that could not be asked are named), and only the
memo decides ownership."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.core.memo import WorkflowMemo
from router.core.model import DataClass, WorkflowStatus
from router.errors import ClusterUnavailable, WorkflowNotFound, WorkflowOperationFailed
from router.followups import Followups, Ref
from router.temporal.locator import Location, LocationCache
from tests.helpers import default_doc
from tests.unit.seams import Audit, Gateway, Run, controller


def memo(tenant: str = "acme") -> WorkflowMemo:
    return WorkflowMemo(
        tenant_id=tenant, data_class=DataClass.PII, user_country="DE", zone="eu",
        residency_zone="eu", region="eu-west", cluster="eu-west-a", rule="zone-home",
        config_version="v", request_id="r",
    )  # fmt: skip


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Followups, Gateway, LocationCache]:
    gateway = Gateway()
    cache = LocationCache()
    return Followups(controller(default_doc(), tmp_path, Audit()), gateway, cache), gateway, cache


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "searched"])
@pytest.mark.parametrize(
    "status", [WorkflowStatus.COMPLETED, WorkflowStatus.CANCELED, WorkflowStatus.FAILED]
)
async def test_signal_and_cancel_of_a_closed_run_name_its_status(
    parts: tuple[Followups, Gateway, LocationCache], status: WorkflowStatus, cached: bool
) -> None:
    f, gateway, cache = parts
    gateway.runs[("eu-west-a", "eu-west", "wf")] = Run("EchoWorkflow", "run-1", memo(), status)
    if cached:
        cache.put("wf", Location("eu-west-a", "eu-west", "eu-west", "eu", "acme"))
    ref = Ref("wf", "", "acme")
    with pytest.raises(WorkflowOperationFailed) as info:
        await f.signal(ref, "pause", [], 0, remaining=5)
    assert status.name in info.value.message and "signal 'pause'" in info.value.message
    with pytest.raises(WorkflowOperationFailed) as info:
        await f.cancel(ref, remaining=5)
    assert status.name in info.value.message and "cancel" in info.value.message
    assert gateway.runs[("eu-west-a", "eu-west", "wf")].status is status, "nothing changed"


async def test_signal_and_cancel_of_a_running_run(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, _ = parts
    run = Run("EchoWorkflow", "run-1", memo())
    gateway.runs[("eu-west-b", "eu-west", "wf")] = run
    loc = await f.signal(Ref("wf", "", "acme"), "pause", [], 0, remaining=5)
    assert loc.cluster == "eu-west-b" and run.signals == ["pause"]
    await f.cancel(Ref("wf", "", "acme"), remaining=5)
    assert run.status is WorkflowStatus.CANCELED


async def test_unknown_id_is_not_found_when_every_possible_home_answered(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, _ = parts
    # globex's data lives in zone eu only: a US cluster being down does not matter.
    gateway.failing["us-east-a"] = "refused"
    with pytest.raises(WorkflowNotFound):
        await f.describe(Ref("nope", "", "globex"), remaining=5)


async def test_unknown_id_with_a_possible_home_down_names_it(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, _ = parts
    gateway.failing["eu-west-a"] = "refused"
    with pytest.raises(ClusterUnavailable) as info:
        await f.describe(Ref("nope", "", "globex"), remaining=5)
    msg = info.value.message
    assert "eu-west-a could not be asked" in msg and "eu-west-a refused the connection" in msg
    assert "not found on eu-west-b" in msg, msg
    assert info.value.cluster == "eu-west-a"


async def test_another_tenants_workflow_is_not_found(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, cache = parts
    gateway.runs[("eu-west-a", "eu-west", "wf")] = Run("EchoWorkflow", "run-1", memo("acme"))
    cache.put("wf", Location("eu-west-a", "eu-west", "eu-west", "eu", "acme"))
    for op in (
        lambda: f.describe(Ref("wf", "", "initech"), remaining=5),
        lambda: f.signal(Ref("wf", "", "initech"), "s", [], 0, remaining=5),
        lambda: f.cancel(Ref("wf", "", "initech"), remaining=5),
    ):
        with pytest.raises(WorkflowNotFound):
            await op()
    assert gateway.runs[("eu-west-a", "eu-west", "wf")].status is WorkflowStatus.RUNNING


async def test_a_stale_cache_entry_is_searched_again(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, cache = parts
    gateway.runs[("eu-west-b", "eu-west", "wf")] = Run("EchoWorkflow", "run-1", memo())
    cache.put("wf", Location("eu-west-a", "eu-west", "eu-west", "eu", "acme"))
    loc, value = await f.query(Ref("wf", "", "acme"), "getStatus", [], 0, remaining=5)
    assert loc.cluster == "eu-west-b" and value == {"status": "running"}
    assert cache.get("wf", "acme") == loc


def test_memos_written_before_the_typed_memo_still_name_their_owner() -> None:
    """Releases before WorkflowMemo wrote ``residency_zone: null`` for unbound data; the
    owner of every such running workflow must still find it."""
    old = {
        "tenant_id": "acme", "data_class": "public", "user_country": "BR", "zone": "us",
        "residency_zone": None, "region": "us-east", "cluster": "us-east-a",
        "rule": "default-region", "config_version": "0123456789abcdef", "request_id": "r-1",
    }  # fmt: skip
    memo = WorkflowMemo.from_json(old)
    assert memo is not None and memo.tenant_id == "acme" and memo.residency_zone == ""
    assert WorkflowMemo.from_json({**old, "tenant_id": None}) is None, "no owner, no access"
    assert WorkflowMemo.from_json({**old, "data_class": "secret"}) is None
    assert WorkflowMemo.from_json("not a mapping") is None
