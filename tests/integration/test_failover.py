"""Failover against real dev servers: SIGKILL and SIGSTOP of an active cluster under a
steady stream of EU PII starts, staying on the standby until an SRE flips back, the
safety rules, dry runs, both clusters of a zone down, and a router restart.

Timing is observed, not asserted (the machines are shared and noisy): the tests check
that failover happens and what callers see; `python -m benchmarks failover` measures
how fast (README)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from temporalio.client import Client

from benchmarks.fleet import Fleet, Outcome, start_stream
from router.audit.query import records
from router.codec import FileKeyProvider, RegionCodec, data_converter
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually, workflow_exists

pytestmark = pytest.mark.integration

EU = ["eu-west-a", "eu-west-b"]


@dataclass
class Fixture:
    fleet: Fleet
    router: pb_grpc.WorkflowRouterStub
    admin: pb_grpc.RoutingAdminStub


@pytest.fixture(scope="module")
async def fx(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Fixture]:
    fleet = Fleet.create(
        tmp_path_factory.mktemp("fleet"),
        {"eu-west": ("eu", 2), "us-east": ("us", 1)},
        {"eu": ["DE", "FR"], "us": ["US"]},
        default_region="us-east",
        failover={"wait_period_ms": 1000},
    )
    try:
        await fleet.start()
        async with grpc.aio.insecure_channel(fleet.address) as channel:
            yield Fixture(
                fleet, pb_grpc.WorkflowRouterStub(channel), pb_grpc.RoutingAdminStub(channel)
            )
    finally:
        fleet.stop()


def start_req(country: str = "DE", data_class: Any = pb.PII) -> pb.StartWorkflowRequest:
    return pb.StartWorkflowRequest(
        workflow_type="EchoWorkflow", workflow_id=f"fo-{uuid.uuid4()}", tenant_id="acme",
        user_country=country, data_class=data_class,
    )  # fmt: skip


async def topology(fx: Fixture) -> dict[str, pb.Region]:
    topo = await fx.admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
    return {r.name: r for r in topo.regions}


def active(region: pb.Region) -> str:
    return next(c.name for c in region.clusters if c.active)


def healthy(region: pb.Region) -> set[str]:
    return {c.name for c in region.clusters if c.healthy}


async def restore(fx: Fixture) -> None:
    """Every cluster up and healthy, eu-west-a active again (SRE flip if needed)."""
    for c in fx.fleet.clusters():
        if c.proc is None or c.proc.poll() is not None:
            c.start()
            await c.wait_ready()

    async def all_healthy() -> bool:
        return all(
            healthy(r) == {c.name for c in r.clusters} for r in (await topology(fx)).values()
        )

    await eventually(all_healthy, what="all clusters healthy")
    if active((await topology(fx))["eu-west"]) != "eu-west-a":
        req = pb.SetActiveClusterRequest(
            region="eu-west", cluster="eu-west-a", reason="test: restore", force=True, actor="test"
        )
        await fx.admin.SetActiveCluster(req, timeout=5)
        await asyncio.sleep(1.1)  # past the fleet's 1 s wait period: tests start clean


async def exists_on(fleet: Fleet, cluster: str, workflow_id: str) -> bool:
    """Asked of the cluster itself, not the router."""
    spec = fleet.cluster(cluster)
    return await workflow_exists(spec.endpoint, spec.namespaces[0], workflow_id)


def check_drill(t_fault: float, outcomes: list[Outcome], what: str) -> float:
    """Common assertions; returns the observed time from fault to first start on -b."""
    assert outcomes, "no starts were sent"
    for o in outcomes:
        if o.code is None:
            assert o.cluster in EU, f"{o.workflow_id} landed on {o.cluster}, outside zone eu"
        else:
            assert o.code is grpc.StatusCode.UNAVAILABLE, (o.code, o.details)
            # Bounded by the call deadline (2 s), never the SDK's 10-30 s retry loops.
            assert o.done - o.sent < 5.0, f"a failed call took {o.done - o.sent:.1f} s"
            assert "eu-west-a" in o.details
    before = [o for o in outcomes if o.done < t_fault]
    assert before and all(o.cluster == "eu-west-a" for o in before)
    on_b = [o for o in outcomes if o.cluster == "eu-west-b"]
    assert on_b, f"no start landed on eu-west-b after {what}"
    switch = min(o.done for o in on_b) - t_fault
    # Once on -b, every later start lands there.
    first_b = min(o.sent for o in on_b)
    later = [o for o in outcomes if o.sent > first_b + 0.5]
    assert later and all(o.cluster == "eu-west-b" for o in later), [
        (o.cluster, o.code) for o in later if o.cluster != "eu-west-b"
    ]
    failed = sum(1 for o in outcomes if o.code is not None)
    print(f"\n{what}: first start on eu-west-b {switch:.2f} s after the fault; "
          f"{failed} failed of {len(outcomes)}")  # fmt: skip
    return switch


async def test_sigkill_fails_over_and_stays_until_an_sre_flips_back(fx: Fixture) -> None:
    await restore(fx)
    primary = fx.fleet.cluster("eu-west-a")
    t_fault, outcomes = await start_stream(fx.router, start_req, 5.0, 1.0, primary.kill)
    check_drill(t_fault, outcomes, "SIGKILL")
    # A start that was never sent (connection refused) waits for the flip and lands on
    # the standby: the only failures left are starts that may have reached the dead
    # server (in flight on its connections when it died).
    unsent = [
        o.details for o in outcomes if o.code is not None and "may have reached" not in o.details
    ]
    assert unsent == [], unsent
    sample = [o for o in outcomes if o.cluster == "eu-west-b"][-3:]
    for o in sample:  # at the source
        assert await exists_on(fx.fleet, "eu-west-b", o.workflow_id)

    eu = (await topology(fx))["eu-west"]
    assert active(eu) == "eu-west-b" and eu.failed_over
    assert eu.last_flip.rule == "automatic-failover" and eu.last_flip.actor == "meridian"
    assert "eu-west-a is unhealthy" in eu.last_flip.reason

    # The primary comes back: traffic stays on -b (failback is manual).
    primary.start()
    await primary.wait_ready()

    async def a_healthy() -> bool:
        return "eu-west-a" in healthy((await topology(fx))["eu-west"])

    await eventually(a_healthy, what="eu-west-a healthy again")
    resp = await fx.router.StartWorkflow(start_req(), timeout=5)
    assert resp.decision.cluster == "eu-west-b" and resp.decision.failed_over

    flip = pb.SetActiveClusterRequest(
        region="eu-west", cluster="eu-west-a", reason="primary recovered", actor="sre-1"
    )
    out = await fx.admin.SetActiveCluster(flip, timeout=5)
    assert out.changed and active(out.before) == "eu-west-b" and active(out.after) == "eu-west-a"
    assert out.after.last_flip.actor == "sre-1" and out.after.last_flip.rule == "manual"
    resp = await fx.router.StartWorkflow(start_req(), timeout=5)
    assert resp.decision.cluster == "eu-west-a" and not resp.decision.failed_over
    assert await exists_on(fx.fleet, "eu-west-a", resp.workflow_id)


async def test_sigstop_hung_primary_fails_over(fx: Fixture) -> None:
    await restore(fx)
    primary = fx.fleet.cluster("eu-west-a")
    try:
        t_fault, outcomes = await start_stream(fx.router, start_req, 7.0, 1.0, primary.pause)
        check_drill(t_fault, outcomes, "SIGSTOP")
        unsure = [o for o in outcomes if o.code is not None and "may have reached" in o.details]
        for o in unsure:
            assert f"workflow id {o.workflow_id}: safe to retry with the same id" in o.details
    finally:
        primary.resume()
    eu = (await topology(fx))["eu-west"]
    assert active(eu) == "eu-west-b"
    assert "no answer within" in eu.last_flip.reason or "timed out" in eu.last_flip.reason


async def test_safety_rules_and_dry_run(fx: Fixture) -> None:
    await restore(fx)
    flip = pb.SetActiveClusterRequest

    async def refused(req: pb.SetActiveClusterRequest) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await fx.admin.SetActiveCluster(req, timeout=5)
        return info.value.code(), info.value.details() or ""

    # A cluster of another region: refused, force or not.
    for force in (False, True):
        code, details = await refused(
            flip(region="eu-west", cluster="us-east-a", reason="x", force=force, actor="sre")
        )
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert "rule target-in-region" in details and "never leaves its region" in details
    # No reason.
    code, details = await refused(flip(region="eu-west", cluster="eu-west-b", actor="sre"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("reason:")
    # Unknown region.
    code, details = await refused(flip(region="mars", cluster="x", reason="x"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "unknown region 'mars'" in details

    # Dry run: reports the impact and the running workflows, changes nothing.
    for _ in range(3):
        await fx.router.StartWorkflow(start_req(), timeout=5)  # no worker: they stay running
    spec = fx.fleet.cluster("eu-west-a")
    codec = data_converter(RegionCodec(FileKeyProvider(fx.fleet.keys_dir).load("eu-west")))
    direct = await Client.connect(spec.endpoint, namespace="eu-west", data_converter=codec)
    running = (await direct.count_workflows("ExecutionStatus = 'Running'")).count
    before = await topology(fx)
    dry = await fx.admin.SetActiveCluster(
        flip(region="eu-west", cluster="eu-west-b", reason="preview", dry_run=True), timeout=5
    )
    assert dry.dry_run and not dry.changed and not dry.refused_rule
    assert active(dry.before) == "eu-west-a" and active(dry.after) == "eu-west-b"
    assert dry.impact.leaving_cluster == "eu-west-a"
    assert dry.impact.running_workflows_known and dry.impact.running_workflows == running >= 3
    changes = {c.requests: (c.before, c.after) for c in dry.impact.route_changes}
    # Only the cluster changes (same region, namespace and task queue).
    assert changes["zone eu (e.g. DE) any data"] == (
        "eu-west/eu-west-a ns eu-west tq eu-west-*-queue",
        "eu-west/eu-west-b",
    )
    assert not any("zone us" in k for k in changes), "a flip in eu moves nothing of us"
    assert await topology(fx) == before, "a dry run changed the topology"

    # Flip to an unhealthy cluster without force: refused; with force: done.
    fx.fleet.cluster("eu-west-b").kill()

    async def b_down() -> bool:
        return "eu-west-b" not in healthy((await topology(fx))["eu-west"])

    await eventually(b_down, what="eu-west-b unhealthy")
    code, details = await refused(
        flip(region="eu-west", cluster="eu-west-b", reason="x", actor="sre")
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "rule target-healthy" in details
    dry = await fx.admin.SetActiveCluster(
        flip(region="eu-west", cluster="eu-west-b", reason="x", dry_run=True), timeout=5
    )
    assert dry.refused_rule == "target-healthy" and not dry.changed
    await restore(fx)

    # A second flip inside the wait period: refused; force overrides.
    await fx.admin.SetActiveCluster(
        flip(region="eu-west", cluster="eu-west-b", reason="drill 1", actor="sre"), timeout=5
    )
    code, details = await refused(
        flip(region="eu-west", cluster="eu-west-a", reason="drill 2", actor="sre")
    )
    assert code is grpc.StatusCode.FAILED_PRECONDITION and "rule wait-period" in details
    forced = await fx.admin.SetActiveCluster(
        flip(region="eu-west", cluster="eu-west-a", reason="break glass", force=True, actor="sre"),
        timeout=5,
    )
    assert forced.changed and forced.after.last_flip.rule == "manual-forced"

    # Every flip, done or refused, is audited with actor, reason, rule and health.
    assert fx.fleet.router is not None
    flips = [r for r in records([fx.fleet.router.audit_dir]) if r["kind"] == "flip"]
    rules = {(r["outcome"], r["rule"]) for r in flips}
    assert {
        ("refused", "target-in-region"),
        ("refused", "reason-required"),
        ("refused", "known-region"),
        ("refused", "target-healthy"),
        ("refused", "wait-period"),
        ("done", "manual"),
        ("done", "manual-forced"),
    } <= rules
    drill = next(r for r in flips if r["reason"] == "drill 2")
    assert drill["actor"] == "sre" and drill["health"] == {
        "eu-west-a": "healthy",
        "eu-west-b": "healthy",
    }


async def test_zone_down_refuses_regulated_and_moves_public(fx: Fixture) -> None:
    await restore(fx)
    for name in EU:
        fx.fleet.cluster(name).kill()

    async def eu_down() -> bool:
        return not healthy((await topology(fx))["eu-west"])

    await eventually(eu_down, what="both eu clusters unhealthy")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fx.router.StartWorkflow(start_req("DE", pb.PII), timeout=5)
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    details = info.value.details() or ""
    assert "zone eu" in details and "eu-west" in details and "not healthy" in details
    # A follow-up of an unknown id cannot be answered NOT_FOUND while a cluster where it
    # could live is down: the answer names exactly those clusters.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await fx.router.DescribeWorkflow(
            pb.WorkflowRef(workflow_id=f"nope-{uuid.uuid4()}", tenant_id="acme"), timeout=5
        )
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "eu-west-a, eu-west-b could not be asked" in (info.value.details() or "")
    assert "not found on us-east-a" in (info.value.details() or "")
    public = await fx.router.StartWorkflow(start_req("DE", pb.PUBLIC), timeout=5)
    assert public.decision.region == "us-east" and public.decision.cluster == "us-east-a"
    assert await exists_on(fx.fleet, "us-east-a", public.workflow_id)
    await restore(fx)


async def test_active_choice_survives_a_router_restart(fx: Fixture, tmp_path: Path) -> None:
    await restore(fx)
    await fx.admin.SetActiveCluster(
        pb.SetActiveClusterRequest(
            region="eu-west", cluster="eu-west-b", reason="before restart", force=True, actor="sre"
        ),
        timeout=5,
    )
    assert fx.fleet.router is not None
    await fx.fleet.router.restart()
    eu = (await topology(fx))["eu-west"]
    assert active(eu) == "eu-west-b"
    assert eu.last_flip.reason == "before restart" and eu.last_flip.actor == "sre"
    resp = await fx.router.StartWorkflow(start_req(), timeout=5)
    assert resp.decision.cluster == "eu-west-b"
    await restore(fx)
