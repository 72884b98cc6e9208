"""Acceptance of the core path against real Temporal dev servers: each start is checked
at the source (the cluster itself is asked whether the workflow is there), never only
on the router's word."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from temporalio.client import WorkflowExecutionStatus

from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.integration.conftest import Clusters, DevProcess

pytestmark = pytest.mark.integration


def value(obj: Any) -> struct_pb2.Value:
    return json_format.ParseDict(obj, struct_pb2.Value())


def start_req(
    country: str,
    data_class: Any = pb.PII,
    *,
    tenant: str = "acme",
    workflow_type: str = "EchoWorkflow",
    workflow_id: str | None = None,
    args: list[Any] | None = None,
    **extra: Any,
) -> pb.StartWorkflowRequest:
    return pb.StartWorkflowRequest(
        workflow_type=workflow_type,
        workflow_id=workflow_id if workflow_id is not None else f"it-{uuid.uuid4()}",
        args=[value(a) for a in (args if args is not None else ["hi"])],
        tenant_id=tenant,
        user_country=country,
        data_class=data_class,
        **extra,
    )


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code(), info.value.details() or ""


PLACEMENTS = [
    ("DE", pb.PII, "acme", "eu", "eu-west", "eu-west-a"),
    ("US", pb.PII, "acme", "us", "us-east", "us-east-a"),
    ("JP", pb.PII, "acme", "apac", "ap-southeast", "ap-southeast-a"),
    ("BR", pb.PUBLIC, "acme", "us", "us-east", "us-east-a"),
    ("US", pb.PII, "globex", "eu", "eu-west", "eu-west-a"),
    ("CA", pb.FINANCIAL, "acme", "us", "us-east", "us-east-a"),
    ("NO", pb.FINANCIAL, "acme", "eu", "eu-west", "eu-west-a"),
]


@pytest.mark.parametrize(
    ("country", "data_class", "tenant", "zone", "region", "cluster"),
    PLACEMENTS,
    ids=[
        "DE-pii",
        "US-pii",
        "JP-pii",
        "BR-public",
        "globex-US-pii",
        "CA-financial",
        "NO-financial",
    ],
)
async def test_start_lands_on_the_right_cluster(
    router: pb_grpc.WorkflowRouterStub,
    clusters: Clusters,
    country: str,
    data_class: int,
    tenant: str,
    zone: str,
    region: str,
    cluster: str,
) -> None:
    req = start_req(country, data_class, tenant=tenant)
    resp = await router.StartWorkflow(req, timeout=10)
    d = resp.decision
    assert (d.zone, d.region, d.cluster) == (zone, region, cluster)
    assert resp.started and resp.run_id and resp.workflow_id == req.workflow_id
    # At the source: the workflow exists on exactly that cluster, nowhere else.
    assert await clusters.holding(req.workflow_id) == {cluster}
    desc = await (await clusters.client(cluster)).get_workflow_handle(req.workflow_id).describe()
    assert desc.run_id == resp.run_id
    assert desc.task_queue == f"{region}-EchoWorkflow-queue"
    assert desc.namespace == region


async def test_pii_of_zoneless_country_is_refused_and_nothing_starts(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req("BR", pb.PII)
    code, details = await code_of(router.StartWorkflow(req, timeout=10))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "BR is in no residency zone" in details
    assert await clusters.holding(req.workflow_id) == set()


async def test_same_workflow_id_twice_is_one_run(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req(
        "DE", workflow_type="DataProcessingWorkflow", args=[{"items": 3, "delay_ms": 200}]
    )
    first = await router.StartWorkflow(req, timeout=10)
    second = await router.StartWorkflow(req, timeout=10)
    assert first.started and not second.started
    assert second.run_id == first.run_id
    client = await clusters.client("eu-west-a")
    runs = [w async for w in client.list_workflows(f"WorkflowId = '{req.workflow_id}'")]
    assert [r.run_id for r in runs] == [first.run_id]
    # After it completed, a retry still gets the same run (the id is final).
    await client.get_workflow_handle(req.workflow_id).result()
    third = await router.StartWorkflow(req, timeout=10)
    assert (third.started, third.run_id) == (False, first.run_id)
    runs = [w async for w in client.list_workflows(f"WorkflowId = '{req.workflow_id}'")]
    assert len(runs) == 1


async def test_empty_workflow_id_is_generated(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    resp = await router.StartWorkflow(start_req("US", workflow_id=""), timeout=10)
    assert len(resp.workflow_id) == 36 and resp.started
    assert await clusters.holding(resp.workflow_id) == {"us-east-a"}


async def test_priority_picks_the_queue(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req("JP", priority=pb.HIGH)
    resp = await router.StartWorkflow(req, timeout=10)
    assert resp.decision.task_queue == "ap-southeast-EchoWorkflow-queue-priority"
    handle = (await clusters.client("ap-southeast-a")).get_workflow_handle(req.workflow_id)
    assert (await handle.describe()).task_queue == "ap-southeast-EchoWorkflow-queue-priority"
    assert await handle.result() == "hi", "the regional worker polls the priority queue"


async def test_query_shows_live_progress_and_follow_ups_find_home(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req(
        "DE", workflow_type="DataProcessingWorkflow", args=[{"items": 8, "delay_ms": 250}]
    )
    await router.StartWorkflow(req, timeout=10)
    ref = pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme")

    async def progress() -> dict[str, Any]:
        q = await router.QueryWorkflow(
            pb.QueryWorkflowRequest(ref=ref, query_name="getProgress"), timeout=10
        )
        assert q.location.cluster == "eu-west-a"
        out: dict[str, Any] = json_format.MessageToDict(q.result)
        return out

    first = await progress()
    await asyncio.sleep(1.2)
    later = await progress()
    assert first["total"] == later["total"] == 8
    assert later["processed"] > first["processed"]
    direct = (
        await (await clusters.client("eu-west-a"))
        .get_workflow_handle(req.workflow_id)
        .query("getProgress")
    )
    assert direct["processed"] >= later["processed"]

    # Pause by signal; the workflow reports it through getStatus.
    await router.SignalWorkflow(pb.SignalWorkflowRequest(ref=ref, signal_name="pause"), timeout=10)
    for _ in range(50):
        status = await router.QueryWorkflow(
            pb.QueryWorkflowRequest(ref=ref, query_name="getStatus"), timeout=10
        )
        if status.result.string_value == "PAUSED":
            break
        await asyncio.sleep(0.1)
    assert status.result.string_value == "PAUSED"
    await router.SignalWorkflow(pb.SignalWorkflowRequest(ref=ref, signal_name="resume"), timeout=10)

    desc = await router.DescribeWorkflow(ref, timeout=10)
    assert desc.status == pb.RUNNING and desc.location.cluster == "eu-west-a"
    assert desc.data_class == pb.PII and desc.tenant_id == "acme"
    result = await router.GetWorkflowResult(ref, timeout=30)
    assert result.status == pb.COMPLETED
    assert json_format.MessageToDict(result.result)["region"] == "eu-west"
    assert json_format.MessageToDict(result.result)["cluster"] == "eu-west-a"


async def test_cancel_reaches_the_cluster(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req(
        "US", workflow_type="DataProcessingWorkflow", args=[{"items": 50, "delay_ms": 200}]
    )
    await router.StartWorkflow(req, timeout=10)
    ref = pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme")
    cancel = await router.CancelWorkflow(ref, timeout=10)
    assert cancel.location.cluster == "us-east-a"
    result = await router.GetWorkflowResult(ref, timeout=30)
    assert result.status == pb.CANCELED
    desc = (
        await (await clusters.client("us-east-a")).get_workflow_handle(req.workflow_id).describe()
    )
    assert desc.status == WorkflowExecutionStatus.CANCELED


async def test_follow_ups_of_unknown_or_foreign_workflows_are_not_found(
    router: pb_grpc.WorkflowRouterStub,
) -> None:
    req = start_req("JP")
    await router.StartWorkflow(req, timeout=10)
    for ref in (
        pb.WorkflowRef(workflow_id=f"nope-{uuid.uuid4()}", tenant_id="acme"),
        pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="someone-else"),
    ):
        code, _ = await code_of(router.DescribeWorkflow(ref, timeout=10))
        assert code is grpc.StatusCode.NOT_FOUND
        code, _ = await code_of(
            router.SignalWorkflow(
                pb.SignalWorkflowRequest(ref=ref, signal_name="pause"), timeout=10
            )
        )
        assert code is grpc.StatusCode.NOT_FOUND


async def test_unknown_query_is_failed_precondition(router: pb_grpc.WorkflowRouterStub) -> None:
    req = start_req("DE", workflow_type="DataProcessingWorkflow", args=[{"items": 20}])
    await router.StartWorkflow(req, timeout=10)
    ref = pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme")
    code, details = await code_of(
        router.QueryWorkflow(pb.QueryWorkflowRequest(ref=ref, query_name="noSuchQuery"), timeout=10)
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "noSuchQuery" in details
    # The worker's failure comes back decoded with the region's codec: the caller reads
    # what the worker said (it lists the queries it knows), not "Encoded failure".
    assert "Encoded failure" not in details
    assert "getProgress" in details, details


async def test_signal_and_cancel_of_a_completed_workflow_name_its_status(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req("DE")
    await router.StartWorkflow(req, timeout=10)
    ref = pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme")
    done = await router.GetWorkflowResult(ref, timeout=30)
    assert done.status == pb.COMPLETED
    code, details = await code_of(
        router.SignalWorkflow(pb.SignalWorkflowRequest(ref=ref, signal_name="pause"), timeout=10)
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "COMPLETED" in details, details
    code, details = await code_of(router.CancelWorkflow(ref, timeout=10))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "COMPLETED" in details, details
    desc = await router.DescribeWorkflow(ref, timeout=10)
    assert desc.status == pb.COMPLETED, "describe still finds it"
    at_source = (
        await (await clusters.client("eu-west-a")).get_workflow_handle(req.workflow_id).describe()
    )
    assert at_source.status == WorkflowExecutionStatus.COMPLETED


async def test_a_workflow_type_no_region_runs_is_refused_before_anything_is_sent(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req("DE", workflow_type="NoSuchWorkflow")
    code, details = await code_of(router.StartWorkflow(req, timeout=10))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "NoSuchWorkflow" in details and "eu-west" in details
    code, explained = await code_of(router.ExplainRoute(req, timeout=10))
    assert code is grpc.StatusCode.FAILED_PRECONDITION and explained == details
    assert await clusters.holding(req.workflow_id) == set()


async def test_explain_has_no_side_effects(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    req = start_req("US", pb.PII, tenant="globex")
    d = await router.ExplainRoute(req, timeout=10)
    assert (d.region, d.cluster, d.rule) == ("eu-west", "eu-west-a", "zone-home")
    assert any("tenant globex" in r for r in d.reasons)
    assert await clusters.holding(req.workflow_id) == set()


BAD_INPUT = [
    ("empty type", {"workflow_type": ""}, "workflow_type"),
    ("unknown data class enum", {"data_class": 17}, "data_class"),
    ("unknown priority enum", {"priority": 9}, "priority"),
    ("unspecified data class", {"data_class": pb.DATA_CLASS_UNSPECIFIED}, "data_class"),
    ("not ISO country", {"user_country": "XY"}, "user_country"),
    ("subdivision of another country", {"user_subdivision": "US-CA"}, "user_subdivision"),
    ("id over 1000 chars", {"workflow_id": "x" * 1001}, "workflow_id"),
    ("args over 2 MiB", {"args": [value("y" * (2 * 1024 * 1024 + 1))]}, "args"),
    ("empty tenant", {"tenant_id": ""}, "tenant_id"),
]


@pytest.mark.parametrize(
    ("changes", "field"), [b[1:] for b in BAD_INPUT], ids=[b[0] for b in BAD_INPUT]
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    router: pb_grpc.WorkflowRouterStub, clusters: Clusters, changes: dict[str, Any], field: str
) -> None:
    req = start_req("DE")
    for key, val in changes.items():
        if key == "args":
            del req.args[:]
            req.args.extend(val)
        else:
            setattr(req, key, val)
    code, details = await code_of(router.StartWorkflow(req, timeout=20))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: "), details
    # ...and the router keeps serving.
    ok = await router.StartWorkflow(start_req("DE"), timeout=10)
    assert ok.started and await clusters.holding(ok.workflow_id) == {ok.decision.cluster}


async def test_topology_tells_the_truth(admin: pb_grpc.RoutingAdminStub, dev: DevProcess) -> None:
    topo = await admin.GetTopology(pb.GetTopologyRequest(), timeout=10)
    assert topo.config_version == dev.served_config().version
    clusters = {c.name: (r.name, r.zone, c) for r in topo.regions for c in r.clusters}
    assert set(clusters) == set(dev.config.table.clusters)
    for name, (region, zone, c) in clusters.items():
        spec = dev.config.table.clusters[name]
        assert (region, zone, c.endpoint) == (spec.region, spec.zone, spec.endpoint)
        assert c.healthy, f"{name} should be healthy: its dev server is running"
        assert c.active == name.endswith("-a")
        assert c.role == (pb.PRIMARY if name.endswith("-a") else pb.STANDBY)
