"""What SREs look at, against a running router and real clusters: /metrics before and
after a SIGKILL of an active cluster (names as pinned), the health endpoints, and the
status page in a real headless Chromium that sees the flip without a reload."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest

from benchmarks.fleet import Fleet, Replica, free_port
from router import metrics
from router.devstack import die_with_parent
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SAMPLE = re.compile(r"^(meridian_[a-z_]+?)(_bucket|_sum|_count|_created)?(\{.*\})? (\S+)$")


@dataclass
class Stack:
    fleet: Fleet
    router: Replica
    http: str
    stub: pb_grpc.WorkflowRouterStub
    admin: pb_grpc.RoutingAdminStub


@pytest.fixture(scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    fleet = Fleet.create(
        tmp_path_factory.mktemp("observe"),
        {"eu-west": ("eu", 2), "us-east": ("us", 1)},
        {"eu": ["DE"], "us": ["US"]},
        default_region="us-east",
    )
    try:
        await fleet.start_clusters()
        port = free_port()
        router = fleet.replica("router")
        witness = fleet.home / "witness"  # so the checkpoint age is reported too
        router.start(fleet.config_path, fleet.keys_dir,
                     ["--http-port", str(port), "--witness-dir", str(witness)])  # fmt: skip
        await router.wait_serving()
        async with grpc.aio.insecure_channel(router.address) as channel:
            stubs = pb_grpc.WorkflowRouterStub(channel), pb_grpc.RoutingAdminStub(channel)
            yield Stack(fleet, router, f"http://127.0.0.1:{port}", *stubs)
    finally:
        fleet.stop()


async def scrape(http: str) -> dict[str, float]:
    """Prometheus text: ``name{labels}`` -> value, for Meridian's series."""
    async with aiohttp.ClientSession() as s, s.get(f"{http}/metrics") as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out = {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if m:
            out[f"{m.group(1)}{m.group(2) or ''}{m.group(3) or ''}"] = float(m.group(4))
    return out


def family(series: str) -> str:
    m = SAMPLE.match(f"{series} 0")
    assert m, series
    return m.group(1)


async def test_the_regional_worker_exports_the_sdks_own_metrics(stack: Stack) -> None:
    """So the standard Temporal dashboards work beside Meridian's."""
    port = free_port()
    argv = [sys.executable, "-m", "router.cli", "worker", "--config", str(stack.fleet.config_path),
            "--keys-dir", str(stack.fleet.keys_dir), "--region", "eu-west",
            "--cluster", "eu-west-b", "--sdk-metrics", f"127.0.0.1:{port}"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *die_with_parent(argv), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        async def sdk_metrics() -> str:
            try:
                async with aiohttp.ClientSession() as s, s.get(url) as r:
                    text = await r.text()
            except aiohttp.ClientError:
                return ""
            return text if "temporal_" in text else ""

        text = await eventually(sdk_metrics, "the worker's SDK metrics")
        assert any(line.startswith("temporal_") for line in text.splitlines())
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 15)


async def test_metrics_tell_the_truth_before_and_after_a_sigkill(stack: Stack) -> None:
    for country in ("DE", "US"):
        await stack.stub.StartWorkflow(pb.StartWorkflowRequest(
            workflow_type="EchoWorkflow", workflow_id=f"m-{uuid.uuid4()}", tenant_id="acme",
            user_country=country, data_class=pb.PII,
        ), timeout=10)  # fmt: skip
    before = await scrape(stack.http)
    names = {family(k) for k in before}
    assert names <= set(metrics.NAMES), f"unpinned: {names - set(metrics.NAMES)}"
    for wanted in ("meridian_decisions_total", "meridian_cluster_healthy",
                   "meridian_cluster_active", "meridian_start_duration_seconds",
                   "meridian_audit_commit_duration_seconds", "meridian_config_info",
                   "meridian_codec_payloads_total", "meridian_leader",
                   "meridian_audit_last_checkpoint_age_seconds"):  # fmt: skip
        assert wanted in names, wanted
    a = 'cluster="eu-west-a",region="eu-west",zone="eu"'
    b = 'cluster="eu-west-b",region="eu-west",zone="eu"'
    assert before[f"meridian_cluster_healthy{{{a}}}"] == 1
    assert before[f"meridian_cluster_active{{{a}}}"] == 1
    assert before[f"meridian_cluster_active{{{b}}}"] == 0
    started = [
        k for k in before if k.startswith("meridian_decisions_total{") and 'outcome="started"' in k
    ]
    assert sum(before[k] for k in started) >= 2

    stack.fleet.cluster("eu-west-a").kill()

    async def flipped() -> dict[str, float]:
        now = await scrape(stack.http)
        return now if now.get(f"meridian_cluster_active{{{b}}}") == 1 else {}

    after = await eventually(flipped, "the flip in /metrics")
    assert after[f"meridian_cluster_healthy{{{a}}}"] == 0
    assert after[f"meridian_cluster_active{{{a}}}"] == 0
    assert after['meridian_cluster_failed_over{region="eu-west",zone="eu"}'] == 1
    assert after[f"meridian_cluster_consecutive_failures{{{a}}}"] >= 3
    flips = [k for k in after if k.startswith("meridian_flips_total{")]
    auto = [k for k in flips if 'kind="automatic"' in k and 'result="done"' in k]
    assert auto and sum(after[k] for k in auto) >= 1, flips


async def test_health_endpoints(stack: Stack) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{stack.http}/healthz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with s.get(f"{stack.http}/readyz") as r:
            assert r.status == 200 and (await r.json())["status"] == "ready"
        async with s.get(f"{stack.http}/api/status") as r:
            status = await r.json()
    assert {c["name"] for r in status["regions"] for c in r["clusters"]} == {
        "eu-west-a", "eu-west-b", "us-east-a",
    }  # fmt: skip
    assert "acme" not in str(status), "no tenant data on the status page"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian's chromium is missing: ./scripts/test installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
        ])  # fmt: skip
        try:
            yield b
        finally:
            b.close()


def test_the_status_page_shows_a_flip_without_a_reload(
    stack: Stack, browser: object, tmp_path: Path
) -> None:
    """In a real browser: the page shows every cluster (eu-west already failed over by
    the test above), then a SIGKILL of us-east-a turns its row unhealthy without a
    reload. A screenshot is kept as the test's artifact."""
    from playwright.sync_api import Browser, expect

    assert isinstance(browser, Browser)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(stack.http + "/")
    for name in ("eu-west-a", "eu-west-b", "us-east-a"):
        expect(page.locator(f'tr[data-cluster="{name}"]')).to_be_visible(timeout=10_000)
    us = stack.fleet.cluster("us-east-a")
    row = page.locator('tr[data-cluster="us-east-a"]')
    expect(row).to_have_attribute("data-healthy", "true", timeout=10_000)
    us.kill()  # the page polls: no reload
    expect(row).to_have_attribute("data-healthy", "false", timeout=15_000)
    expect(row).to_contain_text("UNHEALTHY")
    expect(page.locator('tr[data-cluster="eu-west-b"]')).to_have_attribute(
        "data-active", "true", timeout=10_000
    )
    shot = tmp_path / "status-page.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nstatus page screenshot: {shot}")
    if os.environ.get("MERIDIAN_UPDATE_SCREENSHOT"):
        (ROOT / "docs" / "status-page.png").write_bytes(shot.read_bytes())
    assert shot.stat().st_size > 10_000
    page.close()
