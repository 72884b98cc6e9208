"""Encryption at the source: what the real `temporal` CLI sees with and without each
region's codec server, a CLI start through /encode, and a key rotation mid-workflow."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import uuid
from collections.abc import Iterator

import aiohttp
import pytest
from google.protobuf.message import Message
from prometheus_client.parser import text_string_to_metric_families
from temporalio.api.common.v1 import Payload

from router.codec import FileKeyProvider, KeyRing, RegionCodec
from router.codec.aead import META_KEY_ID
from router.codec.tokens import load_tokens
from router.devstack import temporal_binary
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.integration.conftest import Clusters, DevProcess
from tests.integration.test_readme_and_cli import meridian
from tests.integration.test_routing import start_req

pytestmark = pytest.mark.integration


def b64_forms(text: str) -> list[str]:
    """The marker's base64 at each of the three byte alignments it can take in a blob."""
    out = []
    for pad in range(3):
        encoded = base64.b64encode(b"\x00" * pad + text.encode()).decode()
        out.append(encoded[(pad * 4 + 2) // 3 + 1 : -2])
    return out


def temporal(
    dev: DevProcess, cluster: str, *args: str, region: str | None = None
) -> subprocess.CompletedProcess[str]:
    spec = dev.config.table.clusters[cluster]
    argv = [temporal_binary(), *args, "--address", spec.endpoint, "--namespace", spec.namespaces[0]]
    if region is not None:
        codec = dev.config.table.regions[region].codec_server
        token = load_tokens(region, dev.home / "keys", environ={})[0].decode()
        argv += ["--codec-endpoint", f"http://{codec}", "--codec-auth", f"Bearer {token}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def visible(marker: str, text: str) -> bool:
    return marker in text or any(form in text for form in b64_forms(marker))


async def test_cli_sees_ciphertext_without_the_codec_and_plaintext_with_it(
    dev: DevProcess, router: pb_grpc.WorkflowRouterStub
) -> None:
    marker = f"residency-marker-{uuid.uuid4().hex}"
    req = start_req("DE", args=[marker])
    await router.StartWorkflow(req, timeout=10)
    result = await router.GetWorkflowResult(
        pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme"), timeout=30
    )
    assert result.result.string_value == marker
    show = ("workflow", "show", "--workflow-id", req.workflow_id, "--output", "json")

    raw = temporal(dev, "eu-west-a", *show)
    assert raw.returncode == 0, raw.stderr
    assert (
        "binary/encrypted" in raw.stdout
        or base64.b64encode(b"binary/encrypted").decode() in raw.stdout
    )
    assert not visible(marker, raw.stdout), "the cluster stores the marker readable"

    decoded = temporal(dev, "eu-west-a", *show, region="eu-west")
    assert decoded.returncode == 0, decoded.stderr
    # JSON output shows decoded payloads as base64 of their JSON data: decode it exactly.
    events = json.loads(decoded.stdout)["events"]
    started = events[0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]
    assert base64.b64decode(started["metadata"]["encoding"]) == b"json/plain"
    assert json.loads(base64.b64decode(started["data"])) == marker
    # The human form prints it as is.
    text = temporal(dev, "eu-west-a", *show[:-2], region="eu-west")
    assert text.returncode == 0 and f'"{marker}"' in text.stdout

    # Another region's codec server does not decode it (the CLI gives up after ~10 s).
    foreign = temporal(dev, "eu-west-a", *show, region="us-east")
    assert foreign.returncode != 0
    assert not visible(marker, foreign.stdout + foreign.stderr)

    # Why, asked directly: the US server refuses the EU namespace; in its own namespace
    # it cannot decrypt EU ciphertext; and an EU token is worthless there.
    sealed = json.loads(raw.stdout)["events"][0]["workflowExecutionStartedEventAttributes"]["input"]
    us = f"http://{dev.config.table.regions['us-east'].codec_server}"
    us_token = load_tokens("us-east", dev.home / "keys", environ={})[0].decode()
    eu_token = load_tokens("eu-west", dev.home / "keys", environ={})[0].decode()
    async with aiohttp.ClientSession() as http:
        for path, token, status, fragment in [
            ("/eu-west/decode", us_token, 403, "not served by the us-east codec server"),
            ("/us-east/decode", us_token, 400, "encrypted for region eu-west"),
            ("/us-east/decode", eu_token, 401, "bearer token"),
        ]:
            async with http.post(
                us + path, json=sealed, headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                body = await resp.json()
                assert (resp.status, fragment in body["error"]) == (status, True), body
                assert not visible(marker, json.dumps(body))
        # The US codec server's own /metrics counted those refusals by status.
        async with http.get(us + "/metrics") as resp:
            assert resp.status == 200
            exposition = await resp.text()
    counted = {
        s.labels["status"]: s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == "meridian_codec_server_requests_total" and s.labels["region"] == "us-east"
    }
    assert all(counted.get(status, 0) >= 1 for status in ("400", "401", "403")), counted


async def test_cli_start_through_encode_runs_on_the_regional_worker(
    dev: DevProcess, clusters: Clusters
) -> None:
    marker = f"cli-marker-{uuid.uuid4().hex}"
    wid = f"cli-start-{uuid.uuid4()}"
    started = temporal(
        dev,
        "eu-west-a",
        "workflow",
        "start",
        "--workflow-id",
        wid,
        "--type",
        "EchoWorkflow",
        "--task-queue",
        "eu-west-EchoWorkflow-queue",
        "--input",
        json.dumps(marker),
        region="eu-west",
    )
    assert started.returncode == 0, started.stderr
    handle = (await clusters.client("eu-west-a")).get_workflow_handle(wid)
    assert await asyncio.wait_for(handle.result(), 30) == marker
    raw = temporal(dev, "eu-west-a", "workflow", "show", "--workflow-id", wid, "--output", "json")
    assert raw.returncode == 0 and not visible(marker, raw.stdout)


def iter_payloads(msg: Message) -> Iterator[Payload]:
    """Every data Payload anywhere inside a proto message (inputs, results, memo...).
    Headers are skipped: they carry only the trace context (W3C traceparent), which
    Temporal passes to workers unencoded, by design."""
    for field, value in msg.ListFields():
        if field.message_type is None or field.name == "header":
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if isinstance(item, Payload):
                yield item
            elif isinstance(item, Message):
                yield from iter_payloads(item)


async def test_key_rotation_mid_workflow(
    dev: DevProcess, router: pb_grpc.WorkflowRouterStub, clusters: Clusters
) -> None:
    keys = FileKeyProvider(dev.home / "keys")
    before = keys.load("eu-west")
    req = start_req(
        "DE",
        workflow_type="DataProcessingWorkflow",
        args=[{"items": 12, "delay_ms": 400, "marker": "rotation"}],
    )
    await router.StartWorkflow(req, timeout=10)
    await asyncio.sleep(1.0)
    out = meridian(
        dev.home,
        "keys",
        "rotate",
        "--region",
        "eu-west",
        "--config",
        str(dev.home / "config.yaml"),
        "--keys-dir",
        str(dev.home / "keys"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    after = keys.load("eu-west")
    assert after.active != before.active and before.active in after.keys

    ref = pb.WorkflowRef(workflow_id=req.workflow_id, tenant_id="acme")
    result = await router.GetWorkflowResult(ref, timeout=60)
    assert result.status == pb.COMPLETED

    history = (
        await (await clusters.raw("eu-west-a")).get_workflow_handle(req.workflow_id).fetch_history()
    )
    sealed = [p for event in history.events for p in iter_payloads(event)]
    used = {p.metadata[META_KEY_ID].decode() for p in sealed}
    assert {before.active, after.active} <= used, f"key ids in history: {used}"
    assert all(p.metadata["encoding"] == b"binary/encrypted" for p in sealed)
    codec = RegionCodec(after)
    decoded = [codec.decode_one(p) for p in sealed]  # the whole history decodes
    assert any(b"rotation" in p.data for p in decoded)

    # New starts through the router use the new key.
    echo = start_req("DE", args=["after-rotation"])
    await router.StartWorkflow(echo, timeout=10)
    desc = (
        await (await clusters.raw("eu-west-a"))
        .get_workflow_handle(echo.workflow_id)
        .fetch_history()
    )
    first = desc.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    assert first.metadata[META_KEY_ID].decode() == after.active


def test_keys_never_in_logs(dev: DevProcess) -> None:
    logs = "\n".join(p.read_text(errors="replace") for p in (dev.home / "logs").glob("*.log"))
    logs += dev.output()
    ring: KeyRing
    for region in dev.config.table.regions:
        ring = FileKeyProvider(dev.home / "keys").load(region)
        for key in ring.keys.values():
            assert base64.b64encode(key.material).decode() not in logs
            assert key.material.hex() not in logs
        for token in load_tokens(region, dev.home / "keys", environ={}):
            assert token.decode() not in logs
