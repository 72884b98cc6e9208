"""Starts per second through `meridian serve --workers 1` and `--workers 2`, against one
dev server and against two (two regions, requests alternated between them).

Both routers run at once on their own ports (plaintext, auth off, audit fsynced with
checkpoints, payloads encrypted, metrics on) and take alternated chunks (1, 2, 1, 2, ...)
of StartWorkflow calls at concurrency 64 over 16 connections (the kernel spreads
connections, not calls, over a port's workers). Everything shares this machine's cores:
the dev servers, the routers and this load generator, which is itself a Python process;
the scaling reported is what a second worker buys on that box, and beside it where the
cores went (CPU seconds per wall second of the router's processes, the dev servers and
the load generator), which says whether the router was the bottleneck at all.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import resource
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import emit, machine, progress, render, start_request
from benchmarks.fleet import Fleet, cpu_seconds
from benchmarks.router_vs_direct import chunk
from router.v1 import router_pb2_grpc as pb_grpc

LAYOUTS = {
    1: ({"eu-west": ("eu", 1)}, {"eu": ["DE"]}, ["DE"]),
    2: ({"eu-west": ("eu", 1), "us-east": ("us", 1)}, {"eu": ["DE"], "us": ["US"]}, ["DE", "US"]),
}
CONNECTIONS = 16


async def measure(
    servers: int, n: int, chunks: int, concurrency: int, home: Path
) -> dict[str, Any]:
    layout, countries, users = LAYOUTS[servers]
    fleet = Fleet.create(home, layout, countries)
    await fleet.start_clusters()
    routers = {w: fleet.replica(f"router-{w}w") for w in (1, 2)}
    for w, r in routers.items():
        r.start(fleet.config_path, fleet.keys_dir, ["--workers", str(w)])
    channels: list[grpc.aio.Channel] = []
    try:
        for r in routers.values():
            await r.wait_serving()
        sides: dict[int, Callable[[], Awaitable[None]]] = {}
        for w, r in routers.items():
            stubs = []
            for _ in range(CONNECTIONS):
                channel = grpc.aio.insecure_channel(
                    r.address, options=[("grpc.use_local_subchannel_pool", 1)]
                )  # one TCP connection each, not one shared by all channels
                channels.append(channel)
                stubs.append(pb_grpc.WorkflowRouterStub(channel))
            picks = itertools.cycle(itertools.product(stubs, users))

            async def start(picks: Any = picks) -> None:
                stub, country = next(picks)
                await stub.StartWorkflow(start_request("w", country=country), timeout=30)

            sides[w] = start
        for fn in sides.values():
            await chunk(fn, 200, 16)  # warm up every worker's connections
        done = dict.fromkeys(sides, 0)
        wall = dict.fromkeys(sides, 0.0)
        # Where the cores went while each router took its chunks: the router's processes,
        # the dev servers, and this load generator (cores busy = CPU seconds / wall).
        busy = {w: dict.fromkeys(("router", "dev_servers", "load_generator"), 0.0) for w in sides}
        servers_pids = [c.proc.pid for c in fleet.clusters() if c.proc is not None]
        for _ in range(chunks):
            for w, fn in sides.items():
                pids = router_pids(routers[w].pid)
                before = _cpu(pids), _cpu(servers_pids), own_cpu()
                xs, seconds = await chunk(fn, max(1, n // chunks), concurrency)
                after = _cpu(pids), _cpu(servers_pids), own_cpu()
                for key, b, a in zip(busy[w], before, after, strict=True):
                    busy[w][key] += a - b
                done[w] += len(xs)
                wall[w] += seconds
        rates = {w: done[w] / wall[w] for w in sides}
        return {
            "dev_servers": servers,
            "starts_each": done[1],
            "workers_1_per_s": rates[1],
            "workers_2_per_s": rates[2],
            "scaling": rates[2] / rates[1],
            "cores_busy": {
                f"workers_{w}": {k: v / wall[w] for k, v in busy[w].items()} for w in sides
            },
        }
    finally:
        for channel in channels:
            await channel.close()
        fleet.stop()


def router_pids(pid: int) -> list[int]:
    """The processes doing a router's work: its workers (children of the supervisor),
    else the process itself."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children] or [pid]


def _cpu(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def own_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run(n: int, chunks: int, concurrency: int) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="meridian-workers-") as tmp:
        for servers in (1, 2):
            progress(f"== {servers} dev server(s): {n} starts per router")
            results.append(await measure(servers, n, chunks, concurrency, Path(tmp) / str(servers)))
    return {"benchmark": "workers", "machine": machine(), "concurrency": concurrency,
            "results": results}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks workers", description=__doc__)
    parser.add_argument("--starts", type=int, default=4000, help="per router and layout")
    parser.add_argument("--chunks", type=int, default=8, help="alternations")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.starts, args.chunks, args.concurrency))

    def cores(r: dict[str, Any], w: int) -> str:
        b = r["cores_busy"][f"workers_{w}"]
        return f"{b['router']:.2f} / {b['dev_servers']:.2f} / {b['load_generator']:.2f}"

    table = render(
        ["dev servers", "1 worker starts/s", "2 workers starts/s", "scaling",
         "cores busy, 1 worker (router / dev servers / load)", "cores busy, 2 workers"],
        [(r["dev_servers"], f"{r['workers_1_per_s']:.0f}", f"{r['workers_2_per_s']:.0f}",
          f"{r['scaling']:.2f}x", cores(r, 1), cores(r, 2)) for r in result["results"]],
    )  # fmt: skip
    emit(result, args.json, table)
