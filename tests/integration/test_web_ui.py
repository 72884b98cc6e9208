"""The Temporal Web UI of `meridian dev --ui`, in a real browser (Debian's headless
Chromium driven by Playwright; no browser is downloaded).

A small stack (us-east and eu-west, one cluster each) runs with its UIs. A workflow
started through the router shows its plaintext input and result in its region's UI,
decoded by its region's codec server (which accepts the UI's tokenless requests only in
its loopback development mode); the same page with the UI's codec setting pointed at
the other region's codec server, and a history sealed with one region's key viewed in
the other region's UI, never show the plaintext. Everything started here is stopped by
PID, also when a test fails.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, Request, Response, async_playwright
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from benchmarks.fleet import claim
from router.audit.query import records
from router.codec import FileKeyProvider, KeyRingHolder, RegionCodec, data_converter
from router.devstack import UI_PORT_OFFSET
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import default_doc, free_port, with_free_ports
from tests.integration.conftest import DevProcess, pid_alive, serving, start_dev
from tests.integration.test_routing import start_req

pytestmark = pytest.mark.integration

# Debian's package (/usr/bin/chromium); Playwright never downloads a browser here.
CHROMIUM = (
    os.environ.get("MERIDIAN_CHROMIUM")
    or shutil.which("chromium")
    or shutil.which("/usr/bin/chromium")
)
# Headless and quiet: no calls out of the machine (updates, sync, field trials).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Long enough for a cold UI on a busy 2-core machine; a bound on "never", not a speed test.
PAGE_TIMEOUT_MS = 45_000
CODEC_FAILED = "Codec Server could not connect"


def port_with_ui_room() -> int:
    """A free port whose UI port (+1000, as `meridian dev --ui` chooses) is free too, and
    claimed, so no other port of the stack is picked there."""
    while True:
        port = free_port()
        if claim(port + UI_PORT_OFFSET):
            return port


def ui_doc() -> dict[str, Any]:
    """The default topology cut to two regions of one cluster each, on free ports."""
    doc = with_free_ports(default_doc())
    del doc["zones"]["apac"], doc["regions"]["ap-southeast"]
    for region in doc["regions"].values():
        region["clusters"] = region["clusters"][:1]
        region["clusters"][0]["endpoint"] = f"127.0.0.1:{port_with_ui_room()}"
    return doc


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    with serving(start_dev(tmp_path_factory.mktemp("ui-stack"), ui_doc(), args=["--ui"])) as dev:
        yield dev


def ui_url(dev: DevProcess, cluster: str) -> str:
    port = int(dev.config.table.clusters[cluster].endpoint.rsplit(":", 1)[1]) + UI_PORT_OFFSET
    return f"http://127.0.0.1:{port}"


def codec_url(dev: DevProcess, region: str) -> str:
    return f"http://{dev.config.table.regions[region].codec_server}"


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One headless Chromium for the module; its PID (asked of the browser itself) is
    checked gone at the end and killed if not."""
    if CHROMIUM is None:
        pytest.fail("no chromium on PATH: scripts/test installs Debian's chromium package")
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        pid = 0
        try:
            cdp = await chromium.new_browser_cdp_session()
            info = await cdp.send("SystemInfo.getProcessInfo")
            pid = next(int(p["id"]) for p in info["processInfo"] if p["type"] == "browser")
            await cdp.detach()
            yield chromium
        finally:
            await chromium.close()
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def start_echo(dev: DevProcess, country: str, marker: str) -> tuple[str, str, str]:
    """An EchoWorkflow holding ``marker``, started through the router (mTLS as the dev
    ``service`` identity) and completed by the region's worker: (id, namespace, cluster)."""
    async with dev.channel("service") as channel:
        router = pb_grpc.WorkflowRouterStub(channel)
        started = await router.StartWorkflow(
            start_req(country, args=[{"marker": marker}], workflow_id=f"ui-{uuid.uuid4()}"),
            timeout=10,
        )
        ref = pb.WorkflowRef(workflow_id=started.workflow_id, tenant_id="acme")
        await router.GetWorkflowResult(ref, timeout=30)
    d = started.decision
    return started.workflow_id, d.namespace, d.cluster


class CodecCalls:
    """The codec requests a page made, as the browser saw them: (url, status or error)."""

    def __init__(self, page: Page, codec: str) -> None:
        self.codec = codec
        self.seen: list[tuple[str, str]] = []
        page.on("response", self._answered)
        page.on("requestfailed", self._failed)

    def _answered(self, response: Response) -> None:
        if response.url.startswith(self.codec):
            self.seen.append((response.url, str(response.status)))

    def _failed(self, request: Request) -> None:
        if request.url.startswith(self.codec):
            self.seen.append((request.url, request.failure or "failed"))


async def open_workflow(browser: Browser, *, codec_override: str | None = None) -> Page:
    """A page in a new browser context (nothing cached or stored). ``codec_override``: the UI's own
    per-browser codec setting ("use my browser setting and ignore the cluster's")."""
    context = await browser.new_context(viewport={"width": 1280, "height": 1000})
    if codec_override is not None:
        await context.add_init_script(
            "window.localStorage.setItem('endpoint', " + json.dumps(json.dumps(codec_override))
            + "); window.localStorage.setItem('overrideRemoteCodecConfiguration', 'true');"
        )  # fmt: skip
    page = await context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    return page


@pytest.fixture(scope="module")
async def us_workflow(stack: DevProcess) -> tuple[str, str, str, str]:
    """A us-east workflow holding a unique marker: (marker, id, namespace, cluster)."""
    marker = f"ui-marker-{uuid.uuid4().hex}"
    return (marker, *await start_echo(stack, "US", marker))


async def stored_input(endpoint: str, ns: str, workflow_id: str) -> Payload:
    """The first input payload as Temporal stores it (asked with no codec)."""
    client = await Client.connect(endpoint, namespace=ns)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    started = history.events[0].workflow_execution_started_event_attributes
    return started.input.payloads[0]


async def shows_ciphertext_only(page: Page, payload: Payload, marker: str) -> None:
    """The page says the codec failed and shows the stored ciphertext, never ``marker``."""
    await page.get_by_text(CODEC_FAILED).filter(visible=True).first.wait_for()
    await page.get_by_text(base64.b64encode(payload.data).decode()).first.wait_for()
    assert payload.metadata["encoding"] == b"binary/encrypted"
    assert marker not in await page.content()


def codec_log(dev: DevProcess, region: str) -> str:
    return (dev.home / "logs" / f"codec-{region}.log").read_text()


async def test_dev_ui_wires_each_ui_to_its_regions_codec_server(stack: DevProcess) -> None:
    out = stack.output()
    assert "web ui" in out and "Web UI: open a workflow at" in out, out
    async with aiohttp.ClientSession() as http:
        for region in ("us-east", "eu-west"):
            cluster = f"{region}-a"
            assert ui_url(stack, cluster) in out, out
            async with http.get(f"{ui_url(stack, cluster)}/api/v1/settings") as resp:
                codec = (await resp.json())["Codec"]
            # The dev server's UI sends no token: the codec server's development mode.
            assert codec["Endpoint"] == codec_url(stack, region) and not codec["PassAccessToken"]
            assert "DEVELOPMENT MODE" in codec_log(stack, region)
            assert f"Origin {ui_url(stack, cluster)}" in codec_log(stack, region)

        async def status(origin: str | None, token: str | None = None) -> int:
            headers = {"X-Namespace": "us-east"}
            headers |= {"Origin": origin} if origin else {}
            headers |= {"Authorization": f"Bearer {token}"} if token else {}
            url = f"{codec_url(stack, 'us-east')}/decode"
            async with http.post(url, json={"payloads": []}, headers=headers) as resp:
                return resp.status

        ours, theirs = ui_url(stack, "us-east-a"), ui_url(stack, "eu-west-a")
        assert await status(ours) == 200
        assert await status(ours.replace("127.0.0.1", "localhost")) == 200
        assert await status(None) == 401  # not the UI: a token, as ever
        assert await status(theirs) == 401  # another region's UI
        assert await status(ours, token="not-a-token-not-a-token") == 401  # a bad token stays bad


async def test_a_workflow_page_shows_its_input_decoded_by_its_regions_codec_server(
    stack: DevProcess, browser: Browser, us_workflow: tuple[str, str, str, str], tmp_path: Path
) -> None:
    marker, workflow_id, ns, cluster = us_workflow
    assert (ns, cluster) == ("us-east", "us-east-a")
    endpoint = stack.config.table.clusters[cluster].endpoint
    stored = await stored_input(endpoint, ns, workflow_id)
    assert marker.encode() not in stored.data  # ciphertext at rest
    page = await open_workflow(browser)
    calls = CodecCalls(page, codec_url(stack, "us-east"))
    await page.goto(f"{ui_url(stack, cluster)}/namespaces/{ns}/workflows/{workflow_id}")
    # Input and result, each decoded by the us-east codec server.
    await page.get_by_text(marker).nth(1).wait_for()
    shot = tmp_path / "web-ui-decoded.png"
    await page.screenshot(path=shot, full_page=True)
    print(f"screenshot of the decoded workflow page: {shot}")
    assert any(outcome == "200" for _, outcome in calls.seen), calls.seen
    assert await page.get_by_text(CODEC_FAILED).filter(visible=True).count() == 0
    await page.context.close()


async def test_the_ui_set_to_another_regions_codec_server_shows_only_ciphertext(
    stack: DevProcess, browser: Browser, us_workflow: tuple[str, str, str, str], tmp_path: Path
) -> None:
    """The UI's own "use my browser's codec endpoint" setting, pointed at eu-west's codec
    server: that server accepts no request of the us-east UI (CORS, and no token)."""
    marker, workflow_id, ns, cluster = us_workflow
    stored = await stored_input(stack.config.table.clusters[cluster].endpoint, ns, workflow_id)
    eu_codec = codec_url(stack, "eu-west")
    page = await open_workflow(browser, codec_override=eu_codec)
    calls = CodecCalls(page, eu_codec)
    await page.goto(f"{ui_url(stack, cluster)}/namespaces/{ns}/workflows/{workflow_id}")
    await shows_ciphertext_only(page, stored, marker)
    await page.screenshot(path=tmp_path / "web-ui-other-codec.png", full_page=True)
    assert calls.seen and all(outcome != "200" for _, outcome in calls.seen), calls.seen
    await page.context.close()


async def test_another_regions_ui_cannot_decode_a_history_sealed_with_this_regions_key(
    stack: DevProcess, browser: Browser, tmp_path: Path
) -> None:
    """A us-east history copied into eu-west's cluster: eu-west's UI and codec server
    (which accepts that UI) hold no us-east key; and asked for a us-east namespace from
    that UI, the eu-west codec server refuses (403) and audits it."""
    marker = f"ui-marker-{uuid.uuid4().hex}"
    eu = stack.config.table.clusters["eu-west-a"]
    us_keys = KeyRingHolder(FileKeyProvider(stack.home / "keys"), "us-east")
    sealed_in_us = await Client.connect(
        eu.endpoint, namespace="eu-west", data_converter=data_converter(RegionCodec(us_keys))
    )
    workflow_id = f"ui-copied-{uuid.uuid4()}"
    # No worker polls this queue: the history stays as written.
    await sealed_in_us.start_workflow(
        "EchoWorkflow", {"marker": marker}, id=workflow_id, task_queue="ui-test-nobody-polls"
    )
    stored = await stored_input(eu.endpoint, "eu-west", workflow_id)
    eu_codec = codec_url(stack, "eu-west")
    page = await open_workflow(browser)
    calls = CodecCalls(page, eu_codec)
    await page.goto(f"{ui_url(stack, 'eu-west-a')}/namespaces/eu-west/workflows/{workflow_id}")
    await shows_ciphertext_only(page, stored, marker)
    await page.screenshot(path=tmp_path / "web-ui-other-key.png", full_page=True)
    # The UI was accepted (CORS, development mode) and the payload was not decodable.
    assert {outcome for _, outcome in calls.seen} == {"400"}, calls.seen
    forbidden = await page.evaluate(
        """async (codec) => (await fetch(codec + "/decode", {
            method: "POST", body: '{"payloads": []}',
            headers: {"Content-Type": "application/json", "X-Namespace": "us-east"},
        })).status""",
        eu_codec,
    )
    assert forbidden == 403
    failures = [
        r for r in records([stack.home / "audit-codec-eu-west"]) if r["kind"] == "auth.failure"
    ]
    assert failures[-1]["why"] == "namespace 'us-east' is not a namespace of region eu-west"
    await page.context.close()
