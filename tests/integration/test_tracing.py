"""One trace from the caller through the router to the regional worker, exported over
real OTLP to an in-test collector (the dev stack runs with OTEL_EXPORTER_OTLP_ENDPOINT)."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.integration.test_routing import start_req
from tests.otlp_collector import Collector

pytestmark = pytest.mark.integration


async def test_a_start_is_one_trace_from_caller_to_worker(
    router: pb_grpc.WorkflowRouterStub, collector: Collector
) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    req = start_req("DE")
    meta = (("traceparent", f"00-{trace_id}-{parent}-01"),)
    resp = await router.StartWorkflow(req, timeout=10, metadata=meta)
    await router.GetWorkflowResult(
        pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme"), timeout=30
    )
    want = {
        ("meridian-router", "/meridian.router.v1.WorkflowRouter/StartWorkflow"),
        ("meridian-router", "StartWorkflow:EchoWorkflow"),
        ("meridian-worker-eu-west-a", "RunWorkflow:EchoWorkflow"),
    }
    for _ in range(100):
        got = {(s.service, s.name) for s in collector.of_trace(trace_id)}
        if want <= got:
            break
        await asyncio.sleep(0.1)
    assert want <= got, f"spans of trace {trace_id}: {sorted(got)}"
    spans = {s.name: s for s in collector.of_trace(trace_id)}
    server = spans["/meridian.router.v1.WorkflowRouter/StartWorkflow"]
    assert server.parent_id == parent, "the router continues the caller's trace"
    assert spans["StartWorkflow:EchoWorkflow"].parent_id == server.span_id
    assert resp.decision.cluster == "eu-west-a"
