"""The audit log end to end: receipts match their records, auditors' tools work on a
real run, a SIGKILLed router loses no acknowledged start, and a full disk stops starts
instead of letting them run unrecorded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from temporalio.client import Client

from benchmarks.fleet import Fleet
from router.audit import verify
from router.audit.query import records
from router.codec.tokens import load_tokens
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually, workflow_exists
from tests.integration.conftest import ROOT, DevProcess
from tests.integration.test_routing import start_req

pytestmark = pytest.mark.integration


def audit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", "audit", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


async def test_receipts_and_auditor_tools_on_a_real_run(
    dev: DevProcess,
    router: pb_grpc.WorkflowRouterStub,
    admin: pb_grpc.RoutingAdminStub,
) -> None:
    audit_dir, key = dev.home / "audit", dev.home / "keys" / "audit.key"
    started = []
    marker = f"argument-{uuid.uuid4().hex}"
    for country, dc in [
        ("DE", pb.PII),
        ("US", pb.FINANCIAL),
        ("JP", pb.INTERNAL),
        ("BR", pb.PUBLIC),
    ]:
        req = start_req(country, dc, args=[marker])
        started.append((req, await router.StartWorkflow(req, timeout=10, metadata=(
            ("x-meridian-caller", "billing-service"),
            ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ))))  # fmt: skip
    refused = start_req("BR", pb.PII)
    with pytest.raises(grpc.aio.AioRpcError):
        await router.StartWorkflow(refused, timeout=10)
    explained = await router.ExplainRoute(start_req("NO", pb.PII), timeout=10)
    await admin.SetActiveCluster(pb.SetActiveClusterRequest(
        region="ap-southeast", cluster="ap-southeast-b", reason="audit drill", actor="auditor-test",
    ), timeout=10)  # fmt: skip
    await admin.SetActiveCluster(pb.SetActiveClusterRequest(
        region="ap-southeast", cluster="ap-southeast-a", reason="audit drill back", force=True,
        actor="auditor-test",
    ), timeout=10)  # fmt: skip

    out = audit_cli("verify", str(audit_dir), "--key-file", str(key))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "chain intact (hmac-sha256)" in out.stdout
    unkeyed = audit_cli("verify", str(audit_dir))
    assert unkeyed.returncode == 2 and "key-required" in unkeyed.stdout

    by_seq = {r["seq"]: r for r in records([audit_dir])}
    for req, resp in started:
        outcome = by_seq[resp.receipt.sequence]
        assert outcome["hash"] == resp.receipt.hash
        assert (outcome["kind"], outcome["workflow_id"], outcome["run_id"]) == (
            "start.outcome",
            req.workflow_id,
            resp.run_id,
        )
        decision = by_seq[resp.decision.receipt.sequence]
        assert decision["hash"] == resp.decision.receipt.hash
        assert outcome["decision_seq"] == resp.decision.receipt.sequence
        assert decision["kind"] == "route.decision"
        assert (decision["cluster"], decision["rule"], decision["reasons"]) == (
            resp.decision.cluster,
            resp.decision.rule,
            list(resp.decision.reasons),
        )
        # The authenticated principal (the certificate's identity), never the name the
        # caller asserted in x-meridian-caller.
        assert (decision["principal"], decision["auth"]) == (
            "spiffe://meridian.local/service",
            "mtls",
        )
        assert "billing-service" not in json.dumps(decision)
        assert outcome["principal"] == "spiffe://meridian.local/service"
        assert decision["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert decision["encryption_key_id"].startswith(resp.decision.region + "-")
        assert decision["seq"] < outcome["seq"], "the decision is durable before the start"
    raw = "".join(f.read_text() for f in sorted(audit_dir.glob("audit-*.jsonl")))
    assert marker not in raw, "workflow arguments never reach the audit log"
    assert by_seq[explained.receipt.sequence]["kind"] == "route.explain"

    wid = started[0][0].workflow_id
    q = audit_cli("query", str(audit_dir), "--workflow-id", wid, "--json")
    kinds = [json.loads(line)["kind"] for line in q.stdout.splitlines()]
    assert kinds == ["route.decision", "start.outcome"]
    q = audit_cli("query", str(audit_dir), "--workflow-id", wid, "--explain")
    assert "user country DE is in zone eu" in q.stdout
    q = audit_cli("query", str(audit_dir), "--kind", "route.refusal", "--json")
    assert refused.workflow_id in q.stdout

    rep = audit_cli("report", str(audit_dir), "--key-file", str(key))
    assert rep.returncode == 0, rep.stdout
    assert "verified: " in rep.stdout and "Residency: PASS: " in rep.stdout
    assert "audit drill" in rep.stdout and "residency" in rep.stdout.lower()
    flips = [
        r for r in records([audit_dir]) if r["kind"] == "flip" and r["reason"] == "audit drill"
    ]
    # The flip's actor is the SRE's authenticated identity; the free text is kept beside.
    assert flips and flips[0]["actor"] == "spiffe://meridian.local/sre"
    assert (flips[0]["auth"], flips[0]["on_behalf_of"]) == ("mtls", "auditor-test")


async def test_codec_server_auth_failures_are_audited(dev: DevProcess) -> None:
    region = dev.config.table.regions["eu-west"]
    token = load_tokens("eu-west", dev.home / "keys", environ={})[0].decode()
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"http://{region.codec_server}/eu-west/decode",
            json={"payloads": []},
            headers={"Authorization": "Bearer not-the-token-not-the-token"},
        ) as resp:
            assert resp.status == 401
        async with http.post(
            f"http://{region.codec_server}/us-east/decode",  # another region's namespace
            json={"payloads": []},
            headers={"Authorization": f"Bearer {token}"},
        ) as resp:
            assert resp.status == 403
    audit_dir = dev.home / "audit-codec-eu-west"
    failures = [r for r in records([audit_dir]) if r["kind"] == "auth.failure"]
    assert [(f["path"], f["why"]) for f in failures[-2:]] == [
        ("/eu-west/decode", "invalid bearer token"),
        ("/us-east/decode", "namespace 'us-east' is not a namespace of region eu-west"),
    ]
    assert {(f["component"], f["region"]) for f in failures} == {("codec-server", "eu-west")}
    assert "not-the-token" not in json.dumps(failures) and token not in json.dumps(failures)
    out = audit_cli("verify", str(audit_dir), "--key-file", str(dev.home / "keys" / "audit.key"))
    assert out.returncode == 0, out.stdout


# -- durability against a router we can kill and starve ------------------------------------


@pytest.fixture
async def fleet(tmp_path: Path) -> Any:
    f = Fleet.create(tmp_path, {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
    try:
        await f.start()
        yield f
    finally:
        f.stop()


def eu_req() -> pb.StartWorkflowRequest:
    return pb.StartWorkflowRequest(
        workflow_type="EchoWorkflow", workflow_id=f"dur-{uuid.uuid4()}", tenant_id="acme",
        user_country="DE", data_class=pb.PII,
    )  # fmt: skip


async def test_sigkill_loses_no_acknowledged_start(fleet: Fleet) -> None:
    acked: list[tuple[pb.StartWorkflowRequest, pb.StartWorkflowResponse]] = []
    sem = asyncio.Semaphore(32)
    async with grpc.aio.insecure_channel(fleet.address) as channel:
        router = pb_grpc.WorkflowRouterStub(channel)

        async def one() -> None:
            req = eu_req()
            async with sem:
                with contextlib.suppress(grpc.aio.AioRpcError):
                    acked.append((req, await router.StartWorkflow(req, timeout=10)))

        burst = [asyncio.create_task(one()) for _ in range(2000)]
        while len(acked) < 150:  # noqa: ASYNC110 - polling a count, not a condition we own
            await asyncio.sleep(0.01)
        assert fleet.router is not None
        os.kill(fleet.router.pid, signal.SIGKILL)
        await asyncio.gather(*burst)
    assert 150 <= len(acked) < 2000, "the kill came mid-burst"
    audit_dir = fleet.router.audit_dir
    result = verify([audit_dir])
    assert result.ok, result.problem
    outcomes = {r["workflow_id"]: r for r in records([audit_dir]) if r["kind"] == "start.outcome"}
    for req, resp in acked:
        rec = outcomes.get(req.workflow_id)
        assert rec is not None, f"acknowledged start {req.workflow_id} has no record"
        assert (rec["run_id"], rec["seq"], rec["hash"]) == (
            resp.run_id,
            resp.receipt.sequence,
            resp.receipt.hash,
        )
    print(f"\nkilled after {len(acked)} acknowledged starts; notes: {result.notes}")


async def test_full_disk_refuses_starts_until_it_recovers(fleet: Fleet) -> None:
    assert fleet.router is not None
    pid = fleet.router.pid
    spec = fleet.cluster("eu-west-a")
    client = await Client.connect(spec.endpoint, namespace="eu-west")
    async with grpc.aio.insecure_channel(fleet.address) as channel:
        router = pb_grpc.WorkflowRouterStub(channel)
        await router.StartWorkflow(eu_req(), timeout=10)
        (current,) = sorted((fleet.router.audit_dir).glob("audit-*.jsonl"))[-1:]
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (current.stat().st_size, hard))
        try:
            req = eu_req()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await router.StartWorkflow(req, timeout=10)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
            assert "audit log unavailable: File too large" in (info.value.details() or "")
            with pytest.raises(Exception, match="not found"):
                await client.get_workflow_handle(req.workflow_id).describe()  # nothing started
        finally:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        ok = await router.StartWorkflow(eu_req(), timeout=10)
        assert ok.started and ok.receipt.sequence > 0
    assert verify([fleet.router.audit_dir]).ok


async def test_config_reload_is_audited_accepted_or_rejected(fleet: Fleet) -> None:
    assert fleet.router is not None
    audit_dir = fleet.router.audit_dir
    original = fleet.config_path.read_text()

    def config_records() -> list[dict[str, Any]]:
        return [r for r in records([audit_dir]) if r["kind"] == "config.change"]

    async def wait_for(count: int) -> list[dict[str, Any]]:
        async def enough() -> list[dict[str, Any]]:
            found = config_records()
            return found if len(found) >= count else []

        found: list[dict[str, Any]] = await eventually(enough, f"{count} config records")
        return found

    (loaded,) = await wait_for(1)
    assert loaded["outcome"] == "loaded"
    fleet.config_path.write_text(original.replace("home_region: eu-west", "home_region: mars"))
    os.kill(fleet.router.pid, signal.SIGHUP)
    rejected = (await wait_for(2))[-1]
    assert rejected["outcome"] == "rejected" and rejected["previous_version"] == loaded["version"]
    assert any("zones.eu.home_region: unknown region 'mars'" in e for e in rejected["errors"])
    async with grpc.aio.insecure_channel(fleet.address) as channel:
        admin = pb_grpc.RoutingAdminStub(channel)
        router = pb_grpc.WorkflowRouterStub(channel)
        topo = await admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
        assert topo.config_version == loaded["version"], "the last good config keeps serving"
        ok = await router.StartWorkflow(eu_req(), timeout=10)
        endpoint = fleet.cluster(ok.decision.cluster).endpoint
        assert ok.started and await workflow_exists(endpoint, "eu-west", ok.workflow_id)

        doc = yaml.safe_load(original)
        doc["tenants"] = {"initech": {"residency_zone": "eu"}}
        fleet.config_path.write_text(yaml.safe_dump(doc))
        os.kill(fleet.router.pid, signal.SIGHUP)
        accepted = (await wait_for(3))[-1]
        assert accepted["outcome"] == "accepted"
        assert accepted["previous_version"] == loaded["version"] != accepted["version"]

        # The record is written before the config is swapped in (audit before effect):
        # wait for the effect, which follows it.
        async def applied() -> bool:
            topo = await admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
            return bool(topo.config_version == accepted["version"])

        await eventually(applied, "the accepted config to serve")
        d = await router.ExplainRoute(eu_req(), timeout=5)
        assert d.config_version == accepted["version"]
    assert verify([audit_dir]).ok
