"""Follow-ups without fan-out: the Temporal calls and the latency of one DescribeWorkflow,
by how the router finds the workflow's home.

Two in-process routers share a home-reference key, as two replicas behind a load
balancer do. Router A starts the workflows (so A has them cached); router B, which did
not start them, describes each with the home reference StartWorkflow returned, with the
start's routing inputs (user_country + data_class), or with the bare id — the search
every uncached follow-up made before home references existed (that code path is
unchanged, so "bare" is the before and "home" the after). Paths are measured in
alternated rounds, at concurrency 1; calls are counted by a proxy around B's gateway.

Topologies:
- default: three regions of two clusters (us, eu, apac), each cluster its own dev server;
- large: 300 regions (100 per zone, 600 clusters) whose endpoints are dialled on the
  same six dev servers, namespace per zone. The calls are real RPCs to real servers;
  only the servers are shared, so latency there is an upper bound of a real fleet's
  (six servers answer what 600 would).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import emit, machine, progress, render
from benchmarks.fleet import Fleet
from router.app import Router
from router.audit import MemoryAuditSink
from router.codec import FileKeyProvider, new_ring
from router.config.sources import ConfigSources
from router.core.model import DataClass, Priority
from router.followups import Ref
from router.homes import HomeRefs
from router.starts import StartInput
from router.temporal.locator import Location

ZONES = {"us": "us-east", "eu": "eu-west", "apac": "ap-southeast"}
COUNTRIES = {"us": ["US", "CA"], "eu": ["DE", "FR"], "apac": ["JP", "AU"]}
PATHS = ("cached", "home", "inputs", "bare")


class CountingGateway:
    """Router B's gateway, counting the Temporal calls it is asked to make."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in ("describe", "signal", "query", "cancel", "result"):
            return attr

        async def counted(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            return await attr(*args, **kw)

        return counted


def large_doc(
    base: dict[str, Any], real: dict[str, str], per_zone: int
) -> tuple[dict[str, Any], dict[str, str]]:
    """``per_zone`` regions per zone, two clusters each, on made-up endpoints; and the
    map from each made-up endpoint to the real dev server of its zone (a or b)."""
    doc = dict(base)
    doc["regions"] = {}
    dial: dict[str, str] = {}
    port = 40_000
    for zone, home in ZONES.items():
        names = [f"{zone}-r{i:03d}" for i in range(per_zone)]
        doc["zones"][zone]["home_region"] = names[0]
        for name in names:
            clusters = []
            for suffix in "ab":
                endpoint = f"127.0.0.1:{port}"
                port += 1
                dial[endpoint] = real[f"{home}-{suffix}"]
                clusters.append({"name": f"{name}-{suffix}", "endpoint": endpoint})
            doc["regions"][name] = {"zone": zone, "clusters": clusters}
    doc["default_region"] = "us-r000"
    doc["naming"] = {"namespace": "{zone}"}
    # Six servers answering for 600 clusters: probe rarely, or probes are the load.
    # and wait long for the first ones (600 at once).
    doc["health"] = {"interval_ms": 60_000, "timeout_ms": 10_000, "failure_interval_ms": 500}
    return doc, dial


async def routers(
    home: Path, doc: dict[str, Any], keys: Path, dial: dict[str, str]
) -> list[tuple[Router, CountingGateway]]:
    """Routers A and B, each with a counting proxy around its follow-ups' gateway."""
    provider = FileKeyProvider(keys)
    for region in doc["regions"]:  # each region its own key ring, as in production
        if not provider.path(region).exists():
            provider.save(new_ring(region))
    path = home / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    sources = ConfigSources.read([path], use_env=False)
    config = sources.resolve()
    shared = HomeRefs((secrets.token_bytes(32),))
    made = []
    for _ in range(2):
        router = Router(
            sources, config, FileKeyProvider(keys), audit=MemoryAuditSink(), homes=shared
        )
        if dial:
            connect = router.pool._connect  # dial the made-up endpoints on real servers

            async def rewired(endpoint: str, credentials: Any, _c: Any = connect) -> Any:
                return await _c(dial[endpoint], credentials)

            router.pool._connect = rewired  # type: ignore[method-assign]
        await router.start(first_probe_timeout=30)
        counting = CountingGateway(router.followups._gateway)
        router.followups._gateway = counting
        made.append((router, counting))
    return made


async def start_some(a: Router, n: int) -> list[tuple[str, str]]:
    """n workflows (DE, PII) started by A; (workflow id, home reference) of each."""
    out = []
    for _ in range(n):
        res = await a.starts.start(
            StartInput(
                workflow_type="EchoWorkflow", workflow_id=f"fu-{uuid.uuid4()}", args=["x"],
                args_size=3, tenant_id="acme", user_country="DE", user_subdivision="",
                data_class=DataClass.PII, priority=Priority.NORMAL, request_id="",
            ),
            remaining=30,
        )  # fmt: skip
        d = res.decision
        loc = Location(d.cluster, d.namespace, d.region, d.zone, "acme")
        out.append((res.workflow_id, a.followups.home_of(res.workflow_id, loc)))
    return out


def ref(path: str, workflow_id: str, home: str) -> Ref:
    if path == "home":
        return Ref(workflow_id, "", "acme", home=home)
    if path == "inputs":
        return Ref(workflow_id, "", "acme", user_country="DE", data_class=DataClass.PII)
    return Ref(workflow_id, "", "acme")  # cached (on A) or bare (on B)


async def measure(
    pair: list[tuple[Router, CountingGateway]],
    workflows: dict[str, list[tuple[str, str]]],
    rounds: int,
) -> dict[str, dict[str, float]]:
    """Each path on workflows of its own (so B never has one cached), in alternated
    rounds."""
    lat: dict[str, list[float]] = {p: [] for p in PATHS}
    calls: dict[str, list[int]] = {p: [] for p in PATHS}
    for r in range(rounds):
        for path in PATHS:
            router, counting = pair[0] if path == "cached" else pair[1]
            mine = workflows[path]
            size = max(1, len(mine) // rounds)
            for wid, home in mine[r * size : (r + 1) * size]:
                before = counting.calls
                t0 = time.perf_counter()
                await router.followups.describe(ref(path, wid, home), remaining=30)
                lat[path].append(time.perf_counter() - t0)
                calls[path].append(counting.calls - before)
    return {
        p: {
            "n": len(lat[p]),
            "calls_per_followup": statistics.mean(calls[p]),
            "p50_ms": statistics.median(lat[p]) * 1e3,
            "p99_ms": sorted(lat[p])[max(0, int(len(lat[p]) * 0.99) - 1)] * 1e3,
        }
        for p in PATHS
    }


async def run(n: int, rounds: int, per_zone: int) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "followups", "machine": machine(), "results": []}
    with tempfile.TemporaryDirectory(prefix="meridian-followups-bench-") as tmp:
        home = Path(tmp)
        fleet = Fleet.create(
            home / "fleet", {r: (z, 2) for z, r in ZONES.items()}, COUNTRIES,
            default_region="us-east",
        )  # fmt: skip
        for region, (zone, clusters) in fleet.regions.items():
            for c in clusters:
                c.namespaces = (region, zone)  # the large topology's namespace per zone
        try:
            await fleet.start_clusters()
            base = yaml.safe_load(fleet.config_path.read_text())
            real = {c.name: c.endpoint for c in fleet.clusters()}
            big, dial = large_doc(yaml.safe_load(fleet.config_path.read_text()), real, per_zone)
            topologies = [
                ("default (3 regions, 6 clusters)", base, {}),
                (f"large ({3 * per_zone} regions, {6 * per_zone} clusters)", big, dial),
            ]
            for label, doc, dial_map in topologies:
                progress(f"== {label}: starting routers")
                pair = await routers(home / label.split()[0], doc, fleet.keys_dir, dial_map)
                try:
                    warm = max(1, n // 10)
                    progress(f"== {label}: starting {4 * (n + warm)} workflows")
                    made = await start_some(pair[0][0], 4 * (n + warm))
                    sets = {p: made[i::4] for i, p in enumerate(PATHS)}
                    await measure(pair, {p: w[:warm] for p, w in sets.items()}, 1)
                    progress(f"== {label}: {n} follow-ups per path")
                    paths = await measure(pair, {p: w[warm:] for p, w in sets.items()}, rounds)
                finally:
                    for router, _ in pair:
                        await router.close()
                result["results"].append({"topology": label, "paths": paths})
        finally:
            fleet.stop()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks followups", description=__doc__)
    parser.add_argument("--n", type=int, default=200, help="follow-ups per path and topology")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--per-zone", type=int, default=100, help="large topology: regions per zone"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.n, args.rounds, args.per_zone))
    rows = [
        (r["topology"], path, f"{s['calls_per_followup']:.1f}", f"{s['p50_ms']:.2f}",
         f"{s['p99_ms']:.2f}")
        for r in result["results"]
        for path, s in r["paths"].items()
    ]  # fmt: skip
    table = render(["topology", "follow-up knows", "Temporal calls", "p50 ms", "p99 ms"], rows)
    emit(result, args.json, table)
