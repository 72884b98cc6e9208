"""Failover drill: a steady stream of EU PII starts through the router; SIGKILL (then,
separately, SIGSTOP) the active cluster; measure, over several drills, the time from the
fault to the automatic flip (control plane) and to the first start that lands on the
standby (what callers see), and how many calls failed. Fresh dev servers per run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import emit, machine, progress, render, start_request
from benchmarks.fleet import Fleet, start_stream
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc


def drill_request() -> pb.StartWorkflowRequest:
    request: pb.StartWorkflowRequest = start_request("drill", tenant="drill")
    return request


async def _region(admin: Any) -> pb.Region:
    topo = await admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
    region: pb.Region = next(r for r in topo.regions if r.name == "eu-west")
    return region


async def _reset(fleet: Fleet, admin: Any) -> None:
    """Primary back, every cluster healthy, primary active, past the wait period."""
    for c in fleet.clusters():
        if c.proc is None or c.proc.poll() is not None:
            c.start()
            await c.wait_ready()
    deadline = time.monotonic() + 30
    while True:
        region = await _region(admin)
        if all(c.healthy for c in region.clusters):
            break
        if time.monotonic() > deadline:
            raise RuntimeError("clusters did not all become healthy")
        await asyncio.sleep(0.1)
    if not region.clusters[0].active:
        await admin.SetActiveCluster(
            pb.SetActiveClusterRequest(
                region="eu-west", cluster="eu-west-a", reason="drill reset", force=True,
                actor="drill",
            ),
            timeout=5,
        )  # fmt: skip
    await asyncio.sleep(1.2)


async def drill(fleet: Fleet, router: Any, admin: Any, fault: str) -> dict[str, Any]:
    await _reset(fleet, admin)
    primary = fleet.cluster("eu-west-a")
    action = primary.kill if fault == "kill" else primary.pause
    wall: list[float] = []

    def inject() -> None:
        wall.append(time.time())
        action()

    try:
        t_fault, outcomes = await start_stream(router, drill_request, 6.0, 1.0, inject)
    finally:
        if fault == "stop":
            primary.resume()
    region = await _region(admin)
    flipped = region.last_flip
    detect = (
        flipped.time.ToDatetime().timestamp() - wall[0]
        if flipped.to_cluster == "eu-west-b"
        else None
    )
    on_b = [o.done for o in outcomes if o.cluster == "eu-west-b"]
    outside = [
        o.cluster for o in outcomes if o.cluster and o.cluster not in ("eu-west-a", "eu-west-b")
    ]
    if outside:
        raise RuntimeError(f"starts landed outside zone eu: {outside}")
    return {
        "fault": fault,
        "flip_after_s": detect,
        "first_start_on_standby_s": (min(on_b) - t_fault) if on_b else None,
        "failed_calls": sum(1 for o in outcomes if o.code is not None),
        # Failures of starts the router knows were not sent anywhere (refused by the
        # dead server's closed port, or by routing while no healthy cluster was
        # published): each could have waited for the flip and landed on the standby.
        "failed_unsent": sum(
            1 for o in outcomes if o.code is not None and "may have reached" not in o.details
        ),
        "calls": len(outcomes),
    }


async def run(drills: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meridian-drill-") as home:
        fleet = Fleet.create(
            Path(home), {"eu-west": ("eu", 2)}, {"eu": ["DE"]}, failover={"wait_period_ms": 1000}
        )
        try:
            await fleet.start()
            async with grpc.aio.insecure_channel(fleet.address) as channel:
                router = pb_grpc.WorkflowRouterStub(channel)
                admin = pb_grpc.RoutingAdminStub(channel)
                results = []
                for fault in ("kill", "stop"):
                    for i in range(drills):
                        r = await drill(fleet, router, admin, fault)
                        progress(f"  drill {fault} #{i + 1}: flip {r['flip_after_s']:.2f} s, "
                                 f"first start on standby {r['first_start_on_standby_s']:.2f} s, "
                                 f"{r['failed_calls']}/{r['calls']} failed "
                                 f"({r['failed_unsent']} never sent)")  # fmt: skip
                        results.append(r)
        finally:
            fleet.stop()
    summary = []
    for fault in ("kill", "stop"):
        rs = [r for r in results if r["fault"] == fault]
        flips = [r["flip_after_s"] for r in rs if r["flip_after_s"] is not None]
        firsts = [
            r["first_start_on_standby_s"] for r in rs if r["first_start_on_standby_s"] is not None
        ]
        summary.append({
            "fault": fault, "drills": len(rs),
            "flip_median_s": statistics.median(flips), "flip_max_s": max(flips),
            "switch_median_s": statistics.median(firsts), "switch_max_s": max(firsts),
            "failed_median": statistics.median(r["failed_calls"] for r in rs),
            "failed_unsent_total": sum(r["failed_unsent"] for r in rs),
            "calls_median": statistics.median(r["calls"] for r in rs),
        })  # fmt: skip
    return {"benchmark": "failover", "machine": machine(), "summary": summary, "drills": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks failover", description=__doc__)
    parser.add_argument("--drills", type=int, default=5, help="per fault kind (default 5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.drills))
    rows = [
        (s["fault"], s["drills"], f"{s['flip_median_s']:.2f}", f"{s['flip_max_s']:.2f}",
         f"{s['switch_median_s']:.2f}", f"{s['switch_max_s']:.2f}",
         f"{s['failed_median']:.0f} of {s['calls_median']:.0f}", s["failed_unsent_total"])
        for s in result["summary"]
    ]  # fmt: skip
    table = render(
        ["fault", "drills", "flip median s", "flip max s", "first start on standby median s",
         "max s", "failed calls (median)", "never-sent failures (all drills)"],
        rows,
    )  # fmt: skip
    emit(result, args.json, table)
