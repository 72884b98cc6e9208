"""The alert rules and the dashboard against live metrics: a real Prometheus (Debian's
prometheus package, the one that brings promtool) scrapes a real router in front of real
Temporal dev servers and evaluates deploy/prometheus/alerts.yaml every second.

Every rule evaluates without error on what the router actually serves (label sets,
vector matching), a healthy fleet has no alert pending, every dashboard query runs, and
killing clusters makes the matching alerts go pending — and only those."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml

from benchmarks.fleet import Fleet, free_port
from benchmarks.fleet import _stop as stop_process
from router.devstack import die_with_parent
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually
from tests.unit.prom import (
    JOB,
    PROMETHEUS_DIR,
    as_promql,
    dashboard,
    dashboard_exprs,
    prometheus_tool,
)

pytestmark = pytest.mark.integration


@dataclass
class Live:
    fleet: Fleet
    prometheus: str  # http://127.0.0.1:PORT
    stub: pb_grpc.WorkflowRouterStub

    async def api(self, path: str, **params: str) -> Any:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{self.prometheus}/api/v1/{path}", params=params) as r,
        ):
            body = await r.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    async def active_alerts(self) -> list[dict[str, Any]]:
        """Alerts pending or firing now."""
        return list((await self.api("alerts"))["alerts"])


def start_prometheus(exe: str, config: Path, home: Path, port: int) -> subprocess.Popen[bytes]:
    with open(home / "prometheus.log", "wb") as log:
        return subprocess.Popen(
            die_with_parent([
                exe, f"--config.file={config}", f"--storage.tsdb.path={home / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
            ]),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip


async def ready(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(f"{url}/-/ready") as r:
            return r.status == 200
    except aiohttp.ClientConnectionError:
        return False


@pytest.fixture(scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Live]:
    exe = prometheus_tool("prometheus")
    home = tmp_path_factory.mktemp("alerts-live")
    # Manual failover: a dead active stays active, as when an SRE holds the region.
    fleet = Fleet.create(
        home,
        {"eu-west": ("eu", 2), "us-east": ("us", 1)},
        {"eu": ["DE"], "us": ["US"]},
        default_region="us-east",
        failover={"mode": "manual"},
    )
    prom: subprocess.Popen[bytes] | None = None
    try:
        await fleet.start_clusters()
        http_port, prom_port = free_port(), free_port()
        router = fleet.replica("router")
        router.start(fleet.config_path, fleet.keys_dir, ["--http-port", str(http_port)])
        await router.wait_serving()
        config = home / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yaml")],
            "scrape_configs": [{
                "job_name": JOB,
                "static_configs": [{"targets": [f"127.0.0.1:{http_port}"]}],
            }],
        }))  # fmt: skip
        prom = start_prometheus(exe, config, home, prom_port)
        await eventually(lambda: ready(f"http://127.0.0.1:{prom_port}"), "Prometheus ready")
        async with grpc.aio.insecure_channel(router.address) as channel:
            yield Live(fleet, f"http://127.0.0.1:{prom_port}", pb_grpc.WorkflowRouterStub(channel))
    finally:
        stop_process(prom)
        fleet.stop()


async def start(live: Live, country: str) -> None:
    request = pb.StartWorkflowRequest(
        workflow_type="EchoWorkflow", workflow_id=f"a-{uuid.uuid4()}", tenant_id="acme",
        user_country=country, data_class=pb.PII,
    )  # fmt: skip
    try:
        await live.stub.StartWorkflow(request, timeout=10)
    except grpc.aio.AioRpcError as exc:  # BR is in no zone: refused_residency
        assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc


async def test_rules_evaluate_cleanly_and_a_healthy_fleet_is_quiet(live: Live) -> None:
    for country in ("DE", "US", "BR"):
        await start(live, country)

    async def scraped() -> bool:
        data = await live.api("query", query='meridian_decisions_total{outcome="started"}')
        return len(data["result"]) >= 2

    await eventually(scraped, "Prometheus scraping the router's decisions")

    async def evaluated() -> list[dict[str, Any]]:
        groups = (await live.api("rules"))["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = await eventually(evaluated, "every rule evaluated")
    broken = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not broken, broken
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yaml").read_text())["groups"]
    assert len(rules) == sum(len(g["rules"]) for g in groups)

    async def quiet() -> bool:
        return not await live.active_alerts()

    await eventually(quiet, "no alert pending or firing on a healthy fleet")


async def test_every_dashboard_query_runs_on_live_metrics(live: Live) -> None:
    await start(live, "DE")

    async def two_samples() -> bool:  # what rate() needs; the first scrape comes late
        data = await live.api("query", query="rate(meridian_decisions_total[1m])")
        return bool(data["result"])

    await eventually(two_samples, "two scrapes of the decisions counter")
    empty = []
    for where, expr in dashboard_exprs(dashboard()):
        promql = as_promql(expr)
        if promql is None:
            continue
        data = await live.api("query", query=promql)  # fails on any query error
        if not data["result"]:
            empty.append(where)
    # What a router without Consul, witnesses, failures or follow-ups does not report.
    may_be_empty = {
        "Firing alerts [A]", "Regulated refusals by zone and outcome [A]",
        "Follow-up latency p99 by RPC [A]", "Flips [A]", "Config changes [A]",
        "Audit write failures [A]", "Last witnessed checkpoint age [A]",
        "Codec failures [A]", "Codec server requests by status [A]", "Leader [A]",
        "Consul reachable [A]",
    }  # fmt: skip
    assert set(empty) <= may_be_empty, sorted(set(empty) - may_be_empty)


async def test_dead_clusters_raise_exactly_the_matching_alerts(live: Live) -> None:
    # eu-west keeps a healthy standby (manual mode keeps the dead primary active);
    # us-east has no other cluster.
    live.fleet.cluster("eu-west-a").kill()
    live.fleet.cluster("us-east-a").kill()

    def names(alerts: list[dict[str, Any]]) -> set[tuple[str, str]]:
        return {
            (a["labels"]["alertname"], a["labels"].get("cluster") or a["labels"].get("region", ""))
            for a in alerts
        }

    wanted = {
        ("MeridianActiveClusterUnhealthy", "eu-west-a"),
        ("MeridianRegionNoHealthyCluster", "us-east"),
    }

    async def pending() -> set[tuple[str, str]]:
        got = names(await live.active_alerts())
        return got if wanted <= got else set()

    got = await eventually(pending, f"{wanted} pending")
    assert got == wanted, got
    states = {a["state"] for a in await live.active_alerts()}
    assert states == {"pending"}, states  # both wait out their `for: 1m`
