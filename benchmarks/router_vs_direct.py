"""Meridian against calling Temporal directly, in one run on one fresh dev server.

The same workflow is started N times through Meridian's gRPC API — by a `meridian serve`
in plaintext with auth off, by another with mTLS and authorization on, and by a third in
plaintext with metrics off (`--no-metrics`), all with the audit log fsynced and payload
encryption on, as in production — and N times with a plain temporalio client, at
concurrency 1 and 32, in alternated chunks (A, B, C, D, A, ...) so drift hits all.
Reported: p50/p99 latency and throughput of each, the ratio to direct, and each router's
CPU time per start (the kernel's accounting of that router process, over its own chunks
only): the differences are what mTLS with authorization, and metrics, cost.
Every router runs as deployed, with signed audit checkpoints (every 5 s, to a witness
directory) and signed receipts on.

With ``--ship``, another side: the plaintext router again, its audit chain shipped off
the box as it is written (``--audit-ship`` to the in-test OTLP collector, in a process of
its own); its difference to the plain router is what shipping costs. With ``--baseline
DIR``, an older checkout's router runs beside them (before/after in one run).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import yaml
from temporalio.client import Client

from benchmarks.common import emit, machine, render, start_request
from benchmarks.fleet import Fleet, _stop, children, cpu_seconds, free_port, otlp_collector
from router.cli.render import message_to_json
from router.tls import channel_credentials, ensure_dev_pki
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc


def cpu_with_children(pid: int) -> float:
    """A router's CPU seconds and its children's (the audit shipper, when shipping)."""
    return cpu_seconds(pid) + sum(cpu_seconds(c) for c in children(pid))


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


def _secure_overlay(home: Path) -> Path:
    """The mTLS router's layer over the fleet's config: TLS with a development CA,
    authorization on (the bench's identity may start for every tenant)."""
    tls = home / "tls"
    ensure_dev_pki(tls)
    overlay = home / "mtls.yaml"
    overlay.write_text(yaml.safe_dump({
        "server": {"tls": {"cert_file": str(tls / "server.pem"),
                           "key_file": str(tls / "server-key.pem"),
                           "client_ca_file": str(tls / "ca.pem")}},
        "auth": {"enabled": True,
                 "principals": {"spiffe://meridian.local/service": {"tenants": ["*"]}}},
    }))  # fmt: skip
    return overlay


async def run(
    n: int,
    chunks: int,
    concurrencies: list[int],
    baseline: Path | None = None,
    ship: bool = False,
) -> dict[str, Any]:
    """Sides in alternated chunks: the router in plaintext with auth off, the router
    with mTLS and authorization on, the router without metrics, a plain temporalio
    client; with ``ship``, the plaintext router shipping its audit chain; with
    ``baseline`` (another checkout), an older router like the first."""
    with tempfile.TemporaryDirectory(prefix="meridian-rvd-") as tmp:
        home = Path(tmp)
        fleet = Fleet.create(home, {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
        await fleet.start_clusters()
        plain, secure = fleet.replica("router"), fleet.replica("router-mtls")
        bare = fleet.replica("router-bare")
        plain.start(fleet.config_path, fleet.keys_dir, [])
        secure.start(fleet.config_path, fleet.keys_dir, ["--overlay", str(_secure_overlay(home))])
        bare.start(fleet.config_path, fleet.keys_dir, ["--no-metrics"])
        old = fleet.replica("router-baseline") if baseline is not None else None
        if old is not None and baseline is not None:
            old.start(fleet.config_path, fleet.keys_dir, [], source=baseline)
        shipping = fleet.replica("router-shipped") if ship else None
        collector = None
        if shipping is not None:
            port = free_port()
            collector = otlp_collector(port, home / "collector.log")
            shipping.start(fleet.config_path, fleet.keys_dir,
                           ["--audit-ship", f"http://127.0.0.1:{port}"])  # fmt: skip
        tls = home / "tls"
        credentials = channel_credentials(
            tls / "ca.pem", tls / "service.pem", tls / "service-key.pem"
        )
        try:
            await plain.wait_serving()
            await bare.wait_serving()
            await secure.wait_serving(credentials=credentials)
            if old is not None:
                await old.wait_serving()
            if shipping is not None:
                await shipping.wait_serving()
            cluster = fleet.cluster("eu-west-a")
            direct = await Client.connect(cluster.endpoint, namespace="eu-west")
            channels = {
                "router": grpc.aio.insecure_channel(plain.address),
                "router_mtls": grpc.aio.secure_channel(secure.address, credentials),
                "router_no_metrics": grpc.aio.insecure_channel(bare.address),
            }
            pids = {"router": plain.pid, "router_mtls": secure.pid, "router_no_metrics": bare.pid}
            if old is not None:
                channels["router_baseline"] = grpc.aio.insecure_channel(old.address)
                pids["router_baseline"] = old.pid
            pids = {"router": plain.pid, "router_mtls": secure.pid}
            if shipping is not None:
                channels["router_shipped"] = grpc.aio.insecure_channel(shipping.address)
                pids["router_shipped"] = shipping.pid

            def via(stub: Any) -> Callable[[], Awaitable[None]]:
                async def start() -> None:
                    await stub.StartWorkflow(start_request("r"), timeout=30)

                return start

            async def via_direct() -> None:
                await direct.start_workflow(
                    "EchoWorkflow", id=f"d-{uuid.uuid4()}", task_queue="eu-west-EchoWorkflow-queue"
                )

            sides: dict[str, Callable[[], Awaitable[None]]] = {
                name: via(pb_grpc.WorkflowRouterStub(ch)) for name, ch in channels.items()
            }
            sides["direct"] = via_direct
            for fn in sides.values():  # warm up connections, caches, JIT paths
                await chunk(fn, 100, 8)
            results = []
            for c in concurrencies:
                lat: dict[str, list[float]] = {side: [] for side in sides}
                wall = dict.fromkeys(sides, 0.0)
                cpu = dict.fromkeys(pids, 0.0)
                per = max(1, n // chunks)
                for _ in range(chunks):
                    for side, fn in sides.items():
                        before = cpu_with_children(pids[side]) if side in pids else 0.0
                        xs, w = await chunk(fn, per, c)
                        if side in pids:
                            cpu[side] += cpu_with_children(pids[side]) - before
                        lat[side] += xs
                        wall[side] += w
                row: dict[str, Any] = {"concurrency": c, "starts_each": len(lat["router"])}
                for side in sides:
                    row[f"{side}_p50_ms"] = statistics.median(lat[side]) * 1e3
                    row[f"{side}_p99_ms"] = pct(lat[side], 0.99) * 1e3
                    row[f"{side}_per_s"] = len(lat[side]) / wall[side]
                for side in pids:
                    row[f"{side}_added_p50_ms"] = row[f"{side}_p50_ms"] - row["direct_p50_ms"]
                    row[f"{side}_ratio"] = row[f"{side}_per_s"] / row["direct_per_s"]
                    row[f"{side}_cpu_us_per_start"] = cpu[side] / len(lat[side]) * 1e6
                row["mtls_added_cpu_us_per_start"] = (
                    row["router_mtls_cpu_us_per_start"] - row["router_cpu_us_per_start"]
                )
                row["metrics_added_cpu_us_per_start"] = (
                    row["router_cpu_us_per_start"] - row["router_no_metrics_cpu_us_per_start"]
                )
                if shipping is not None:
                    row["shipping_added_cpu_us_per_start"] = (
                        row["router_shipped_cpu_us_per_start"] - row["router_cpu_us_per_start"]
                    )
                    row["shipping_lag_after_chunks"] = await _lag(channels["router_shipped"])
                results.append(row)
            # Checkpoints are on by default in `meridian serve`: show that they ran.
            admin = pb_grpc.RoutingAdminStub(channels["router"])
            topo = await admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
            checkpoints = message_to_json(topo.audit_checkpoints)
            for ch in channels.values():
                await ch.close()
        finally:
            fleet.stop()
            _stop(collector)
    return {
        "benchmark": "router_vs_direct",
        "machine": machine(),
        "results": results,
        "audit_checkpoints": checkpoints,
        "baseline": str(baseline) if baseline is not None else None,
        "goals": {"added_p50_ms_at_1": 1.0, "throughput_ratio_at_32": 0.9,
                  "router_cpu_us_per_start_at_32": 800},
    }  # fmt: skip


async def _lag(channel: grpc.aio.Channel) -> int:
    """The shipping router's lag (records written, not yet acknowledged by the sink)."""
    admin = pb_grpc.RoutingAdminStub(channel)
    topo = await admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
    return int(topo.audit_shipping.lag)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks router_vs_direct", description=__doc__
    )
    parser.add_argument("--starts", type=int, default=2000, help="per side and concurrency")
    parser.add_argument("--chunks", type=int, default=10, help="A/B alternations")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument(
        "--baseline", type=Path,
        help="a checkout of an older version (git worktree add DIR COMMIT): its router "
        "runs beside this one, plaintext like 'router', for a before/after in one run",
    )  # fmt: skip
    parser.add_argument(
        "--ship", action="store_true", help="add a router whose audit chain is shipped (OTLP)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.starts, args.chunks, args.concurrency, args.baseline, args.ship))
    shown = ["router", "router_mtls", "router_no_metrics", "direct"]
    if args.ship:
        shown.insert(3, "router_shipped")
    if args.baseline is not None:
        shown.insert(0, "router_baseline")
    table = render(
        ["conc.", "side", "p50/p99 ms", "added p50 ms", "starts/s", "ratio to direct",
         "router CPU µs/start"],
        [(r["concurrency"], side,
          f"{r[f'{side}_p50_ms']:.2f} / {r[f'{side}_p99_ms']:.2f}",
          f"{r[f'{side}_added_p50_ms']:.2f}" if side != "direct" else "",
          f"{r[f'{side}_per_s']:.0f}",
          f"{r[f'{side}_ratio']:.2f}" if side != "direct" else "",
          f"{r[f'{side}_cpu_us_per_start']:.0f}" if side != "direct" else "")
         for r in result["results"]
         for side in shown],
    )  # fmt: skip
    extra = "\n".join(
        f"mTLS + authorization add {r['mtls_added_cpu_us_per_start']:.0f} µs of router CPU per "
        f"start at concurrency {r['concurrency']}"
        + (
            f"; shipping adds {r['shipping_added_cpu_us_per_start']:.0f} µs (lag after its "
            f"chunks: {r['shipping_lag_after_chunks']} records)"
            if args.ship
            else ""
        )
        for r in result["results"]
    )
    cp = result["audit_checkpoints"]
    extra += (
        f"\naudit checkpoints (router): every {cp['interval_seconds']:g} s, last at seq "
        f"{cp['checkpoint_seq']} of {cp['log_seq']}; witnesses: "
        + ", ".join(f"{w['name']} seq {w['published_seq']}" for w in cp["witnesses"])
    )
    table = f"{table}\n{extra}"
    emit(result, args.json, table)
