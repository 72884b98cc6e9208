"""Meridian against calling Temporal directly, in one run on one fresh dev server.

The same workflow is started N times through Meridian's gRPC API (a `meridian serve`
process with the audit log fsynced and payload encryption on, as in production) and N
times with a plain temporalio client, at concurrency 1 and 32, in alternated chunks
(A, B, A, B, ...) so drift hits both. Reported: p50/p99 latency and throughput of each,
their ratio, and the router's CPU time per start (from the kernel's accounting of the
router process, over the router chunks only).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from temporalio.client import Client

from benchmarks.common import emit, machine, render
from benchmarks.fleet import Fleet
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (the kernel's accounting)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def chunk(
    start_one: Callable[[], Awaitable[None]], n: int, concurrency: int
) -> tuple[list[float], float]:
    """n starts, ``concurrency`` at a time; (latencies, wall seconds)."""
    latencies: list[float] = []
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            t = time.perf_counter()
            await start_one()
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - t0


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run(n: int, chunks: int, concurrencies: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meridian-rvd-") as tmp:
        fleet = Fleet.create(Path(tmp), {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
        await fleet.start_clusters()
        replica = fleet.replica("router")
        replica.start(fleet.config_path, fleet.keys_dir, [])
        try:
            await replica.wait_serving()
            assert replica.proc is not None
            cluster = fleet.cluster("eu-west-a")
            direct = await Client.connect(cluster.endpoint, namespace="eu-west")
            channel = grpc.aio.insecure_channel(replica.address)
            router = pb_grpc.WorkflowRouterStub(channel)

            async def via_router() -> None:
                await router.StartWorkflow(pb.StartWorkflowRequest(
                    workflow_type="EchoWorkflow", workflow_id=f"r-{uuid.uuid4()}",
                    tenant_id="bench", user_country="DE", data_class=pb.PII,
                ), timeout=30)  # fmt: skip

            async def via_direct() -> None:
                await direct.start_workflow(
                    "EchoWorkflow", id=f"d-{uuid.uuid4()}", task_queue="eu-west-EchoWorkflow-queue"
                )

            for fn in (via_router, via_direct):  # warm up connections, caches, JIT paths
                await chunk(fn, 100, 8)
            results = []
            for c in concurrencies:
                lat: dict[str, list[float]] = {"router": [], "direct": []}
                wall = {"router": 0.0, "direct": 0.0}
                cpu = 0.0
                per = max(1, n // chunks)
                for _ in range(chunks):
                    before = cpu_seconds(replica.proc.pid)
                    xs, w = await chunk(via_router, per, c)
                    cpu += cpu_seconds(replica.proc.pid) - before
                    lat["router"] += xs
                    wall["router"] += w
                    xs, w = await chunk(via_direct, per, c)
                    lat["direct"] += xs
                    wall["direct"] += w
                row: dict[str, Any] = {"concurrency": c, "starts_each": len(lat["router"])}
                for side in ("router", "direct"):
                    row[f"{side}_p50_ms"] = statistics.median(lat[side]) * 1e3
                    row[f"{side}_p99_ms"] = pct(lat[side], 0.99) * 1e3
                    row[f"{side}_per_s"] = len(lat[side]) / wall[side]
                row["added_p50_ms"] = row["router_p50_ms"] - row["direct_p50_ms"]
                row["throughput_ratio"] = row["router_per_s"] / row["direct_per_s"]
                row["router_cpu_us_per_start"] = cpu / len(lat["router"]) * 1e6
                results.append(row)
            await channel.close()
        finally:
            fleet.stop()
    return {
        "benchmark": "router_vs_direct",
        "machine": machine(),
        "results": results,
        "goals": {"added_p50_ms_at_1": 1.0, "throughput_ratio_at_32": 0.9,
                  "router_cpu_us_per_start": 250},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks router_vs_direct", description=__doc__
    )
    parser.add_argument("--starts", type=int, default=2000, help="per side and concurrency")
    parser.add_argument("--chunks", type=int, default=10, help="A/B alternations")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.starts, args.chunks, args.concurrency))
    table = render(
        ["conc.", "starts", "router p50/p99 ms", "direct p50/p99 ms", "added p50 ms",
         "router/s", "direct/s", "ratio", "router CPU µs/start"],
        [(r["concurrency"], r["starts_each"],
          f"{r['router_p50_ms']:.2f} / {r['router_p99_ms']:.2f}",
          f"{r['direct_p50_ms']:.2f} / {r['direct_p99_ms']:.2f}", f"{r['added_p50_ms']:.2f}",
          f"{r['router_per_s']:.0f}", f"{r['direct_per_s']:.0f}", f"{r['throughput_ratio']:.2f}",
          f"{r['router_cpu_us_per_start']:.0f}") for r in result["results"]],
    )  # fmt: skip
    emit(result, args.json, table)
