"""Follow-ups through the gateway seam: a closed run is told apart from a missing one,
an unknown id is NOT_FOUND only when every cluster where the tenant's workflows can live
answered (and otherwise the clusters that could not be asked are named), and only the
memo decides ownership."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.core.memo import WorkflowMemo
from router.core.model import DataClass, WorkflowStatus
from router.errors import (
    ClusterUnavailable,
    InvalidArgument,
    WorkflowNotFound,
    WorkflowOperationFailed,
)
from router.followups import Followups, Ref
from router.homes import HomeRefs
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
    config = controller(default_doc(), tmp_path, Audit())
    return Followups(config, gateway, cache, HomeRefs((b"k" * 32,))), gateway, cache


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


# -- finding the home: home reference, routing inputs, search -------------------------

EU_WEST_A = Location("eu-west-a", "eu-west", "eu-west", "eu", "acme")
EVERY_CLUSTER = 6  # the default topology: three regions of two clusters, one namespace


def asked(gateway: Gateway) -> list[str]:
    """The Temporal calls made, in order (``op@cluster``)."""
    return [what for kind, what in gateway.journal.entries if kind == "temporal"]


async def test_a_home_reference_asks_its_cluster_only(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, cache = parts
    run = Run("EchoWorkflow", "run-1", memo())
    gateway.runs[("eu-west-a", "eu-west", "wf")] = run
    home = f.home_of("wf", EU_WEST_A)
    loc, info = await f.describe(Ref("wf", "", "acme", home=home), remaining=5)
    assert (loc, info.run_id) == (EU_WEST_A, "run-1")
    assert asked(gateway) == ["describe@eu-west-a"]
    cache.forget("wf")
    gateway.journal.entries.clear()
    await f.signal(Ref("wf", "", "acme", home=home), "pause", [], 0, remaining=5)
    # Described first (a reference is long-lived; the memo says whose the run is now).
    assert asked(gateway) == ["describe@eu-west-a", "signal@eu-west-a"]
    assert run.signals == ["pause"]
    cache.forget("wf")
    gateway.journal.entries.clear()
    await f.describe(Ref("wf", "", "acme"), remaining=5)
    assert len(asked(gateway)) == EVERY_CLUSTER, "without it: every cluster acme may use"


async def test_a_reference_not_sealed_for_this_workflow_and_tenant_is_an_unknown_id(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, _ = parts
    run = Run("EchoWorkflow", "run-1", memo("acme"))
    gateway.runs[("eu-west-a", "eu-west", "wf")] = run
    acme_home = f.home_of("wf", EU_WEST_A)
    with pytest.raises(WorkflowNotFound) as unknown:
        await f.describe(Ref("wf", "", "initech"), remaining=5)
    await f.describe(Ref("wf", "", "acme"), remaining=5)  # cached now: no way around it
    gateway.journal.entries.clear()
    other_workflow = f.home_of("wf-2", EU_WEST_A)
    forged = acme_home[:-2] + ("AA" if not acme_home.endswith("AA") else "BB")
    for ref in (
        Ref("wf", "", "initech", home=acme_home),  # another tenant's reference
        Ref("wf", "", "acme", home=other_workflow),  # another workflow's
        Ref("wf", "", "acme", home=forged),
        Ref("wf", "", "acme", home="h1.AAAA.AAAA"),
    ):
        for op in (
            lambda r: f.describe(r, remaining=5),
            lambda r: f.signal(r, "pause", [], 0, remaining=5),
            lambda r: f.query(r, "q", [], 0, remaining=5),
            lambda r: f.cancel(r, remaining=5),
            lambda r: f.result(r, remaining=5),
        ):
            with pytest.raises(WorkflowNotFound) as refused:
                await op(ref)
            expected = unknown.value.message.replace("initech", ref.tenant_id)
            assert refused.value.message == expected
    assert asked(gateway) == [], "a reference that does not open asks no cluster"
    assert run.signals == [] and run.status is WorkflowStatus.RUNNING


async def test_a_home_reference_finds_the_run_on_its_regions_other_cluster(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, _ = parts
    gateway.runs[("eu-west-b", "eu-west", "wf")] = Run("EchoWorkflow", "run-1", memo())
    loc, _ = await f.describe(Ref("wf", "", "acme", home=f.home_of("wf", EU_WEST_A)), remaining=5)
    assert loc.cluster == "eu-west-b"
    assert asked(gateway) == ["describe@eu-west-a", "describe@eu-west-b"]


async def test_a_home_reference_whose_cluster_is_down_says_so(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    f, gateway, _ = parts
    gateway.failing["eu-west-a"] = "refused"
    with pytest.raises(ClusterUnavailable) as info:
        await f.describe(Ref("wf", "", "acme", home=f.home_of("wf", EU_WEST_A)), remaining=5)
    assert info.value.cluster == "eu-west-a" and "may be there" in info.value.message
    assert sorted(asked(gateway)) == ["describe@eu-west-a", "describe@eu-west-b"]


@pytest.mark.parametrize(
    ("data_class", "regions"),
    [(DataClass.PII, {"eu-west"}), (DataClass.PUBLIC, {"eu-west", "us-east"})],
    ids=["regulated-stays-in-zone", "unregulated-may-use-the-default-region"],
)
async def test_routing_inputs_narrow_the_search(
    parts: tuple[Followups, Gateway, LocationCache], data_class: DataClass, regions: set[str]
) -> None:
    f, gateway, _ = parts
    gateway.runs[("eu-west-b", "eu-west", "wf")] = Run("EchoWorkflow", "run-1", memo())
    ref = Ref("wf", "", "acme", user_country="de", data_class=data_class)
    loc, _ = await f.describe(ref, remaining=5)
    assert loc.cluster == "eu-west-b"
    assert {c.split("@")[1].rsplit("-", 1)[0] for c in asked(gateway)} == regions


async def test_routing_inputs_that_miss_widen_to_every_possible_home(
    parts: tuple[Followups, Gateway, LocationCache],
) -> None:
    """A start made under an older config may sit where today's inputs would not route."""
    f, gateway, _ = parts
    gateway.runs[("ap-southeast-b", "ap-southeast", "wf")] = Run("EchoWorkflow", "r", memo())
    ref = Ref("wf", "", "acme", user_country="DE", data_class=DataClass.PII)
    loc, _ = await f.describe(ref, remaining=5)
    assert loc.cluster == "ap-southeast-b"
    calls = asked(gateway)
    assert len(calls) == EVERY_CLUSTER and len(set(calls)) == EVERY_CLUSTER, "none twice"
    assert set(calls[:2]) == {"describe@eu-west-a", "describe@eu-west-b"}, "narrow first"


@pytest.mark.parametrize(
    ("ref", "field"),
    [
        (Ref("wf", "", "acme", data_class=DataClass.PII), "user_country"),
        (Ref("wf", "", "acme", user_country="DE"), "data_class"),
        (Ref("wf", "", "acme", user_country="XX", data_class=DataClass.PII), "user_country"),
        (
            Ref(
                "wf",
                "",
                "acme",
                user_country="DE",
                user_subdivision="US-CA",
                data_class=DataClass.PII,
            ),
            "user_subdivision",
        ),
        (Ref("wf", "", "acme", home="h1." + "A" * 2000), "home"),
    ],
)
async def test_bad_follow_up_inputs_name_the_field(
    parts: tuple[Followups, Gateway, LocationCache], ref: Ref, field: str
) -> None:
    f, gateway, _ = parts
    with pytest.raises(InvalidArgument) as info:
        await f.describe(ref, remaining=5)
    assert info.value.field == field
    assert asked(gateway) == []
