"""Config propagation: time from a config change to the first decision that reflects it.

Two sources, each measured N times on fresh processes: a file change announced by SIGHUP
to one router, and a Consul KV change (the in-repo Consul emulator) watched by two router
replicas, where the change counts as seen when BOTH replicas decide with the new version.
Decisions are polled with ExplainRoute every millisecond or so.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import yaml

from benchmarks.common import emit, machine, render
from benchmarks.fleet import Fleet, Replica
from router.config import load_file
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

PROBE = pb.StartWorkflowRequest(
    workflow_type="EchoWorkflow", tenant_id="t0", user_country="US", data_class=pb.PII
)


def variant(base: dict[str, Any], i: int) -> dict[str, Any]:
    """The base config with one more tenant: a new version each time."""
    doc = dict(base)
    doc["tenants"] = {f"t{i}": {"residency_zone": "us"}}
    return doc


async def wait_version(stubs: list[Any], version: str, deadline: float) -> float:
    pending = list(stubs)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version} not seen in time")
        still = []
        for stub in pending:
            d = await stub.ExplainRoute(PROBE, timeout=5)
            if d.config_version != version:
                still.append(stub)
        pending = still
        if pending:
            await asyncio.sleep(0.001)
    return time.monotonic()


def quantile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def file_changes(fleet: Fleet, n: int) -> list[float]:
    replica = fleet.replica("file-router")
    replica.start(fleet.config_path, fleet.keys_dir, [])
    await replica.wait_serving()
    assert replica.proc is not None
    base = yaml.safe_load(fleet.config_path.read_text())
    out = []
    async with grpc.aio.insecure_channel(replica.address) as channel:
        stub = pb_grpc.WorkflowRouterStub(channel)
        for i in range(1, n + 1):
            await asyncio.sleep(0.1)
            doc = variant(base, i)
            fleet.config_path.write_text(yaml.safe_dump(doc))
            version = load_file(fleet.config_path).version
            t0 = time.monotonic()
            os.kill(replica.proc.pid, signal.SIGHUP)
            out.append(await wait_version([stub], version, t0 + 10) - t0)
    fleet.config_path.write_text(yaml.safe_dump(base))
    replica.stop()
    return out


async def consul_changes(fleet: Fleet, address: str, n: int, tmp: Path) -> list[float]:
    replicas: list[Replica] = []
    for name in ("r1", "r2"):
        r = fleet.replica(name)
        r.start(fleet.config_path, fleet.keys_dir, ["--consul", address])
        replicas.append(r)
    for r in replicas:
        await r.wait_serving()
    base = yaml.safe_load(fleet.config_path.read_text())
    channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
    stubs = [pb_grpc.WorkflowRouterStub(c) for c in channels]
    out = []
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(1, n + 1):
                # Changes spaced out as in life: the watch loop is rate-limited (50 ms).
                await asyncio.sleep(0.1)
                text = yaml.safe_dump(variant(base, i))
                (tmp / "v.yaml").write_text(text)
                version = load_file(tmp / "v.yaml").version
                t0 = time.monotonic()
                async with http.put(f"http://{address}/v1/kv/meridian/config", data=text) as resp:
                    assert await resp.json() is True
                out.append(await wait_version(stubs, version, t0 + 10) - t0)
    finally:
        for c in channels:
            await c.close()
        for r in replicas:
            r.stop()
    return out


async def run(n: int) -> dict[str, Any]:
    from tests.consul_emulator import EmulatorProcess

    with tempfile.TemporaryDirectory(prefix="meridian-prop-") as tmp:
        fleet = Fleet.create(Path(tmp) / "fleet", {"us-east": ("us", 1)}, {"us": ["US"]})
        consul = EmulatorProcess()
        consul.start()
        try:
            await fleet.start_clusters()
            results = {
                "file (SIGHUP)": await file_changes(fleet, n),
                "consul (both of 2 replicas)": await consul_changes(
                    fleet, consul.address, n, Path(tmp)
                ),
            }
        finally:
            fleet.stop()
            consul.stop()
    return {
        "benchmark": "propagation",
        "machine": machine(),
        "results": [
            {
                "source": k,
                "n": len(v),
                "p50_ms": statistics.median(v) * 1e3,
                "p99_ms": quantile(v, 0.99) * 1e3,
                "max_ms": max(v) * 1e3,
            }
            for k, v in results.items()
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks propagation", description=__doc__)
    parser.add_argument("--changes", type=int, default=50, help="per source (default 50)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.changes))
    table = render(["source", "changes", "p50 ms", "p99 ms", "max ms"], [
        (r["source"], r["n"], f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['max_ms']:.1f}")
        for r in result["results"]
    ])  # fmt: skip
    emit(result, args.json, table)
