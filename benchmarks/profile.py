"""Where the router's CPU goes per start: a `meridian serve` (plaintext, auth off, audit
fsynced, payloads encrypted, metrics on) in front of one dev server, driven at
concurrency 32 by StartWorkflow calls from this process, while `py-spy record --native`
samples the router process (Python and native frames: gRPC's C core, the Temporal SDK's
Rust core, OpenSSL). Each sample is put in one bucket by the innermost frame that names
one (see BUCKETS); the table is the share of the router's samples, and µs per start is
that share of the router's CPU time per start (from /proc, over the same window).

Needs py-spy (``pip install py-spy``; it reads the router's memory with ptrace, which a
process may do to its own children). ``--raw FILE`` keeps the collapsed stacks (for a
flame graph: flamegraph.pl, speedscope).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import emit, machine, render
from benchmarks.fleet import Fleet
from benchmarks.router_vs_direct import chunk, cpu_seconds
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc

# (bucket, pattern on a frame "function (file)"), tried from the innermost frame out;
# the first frame that matches a pattern decides. Stdlib frames (json, hashlib, asyncio,
# ssl) are not matched on their own: they count for whoever called them.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    ("audit", re.compile(r"router/audit/")),
    ("codec (encryption)", re.compile(r"router/codec/|cryptography|libcrypto|aead")),
    ("Temporal client", re.compile(
        r"temporalio/|temporal_sdk_bridge|tokio|tonic|hyper|\bh2::|prost|tower::"
    )),
    ("metrics and tracing", re.compile(r"opentelemetry|router/metrics\.py|router/telemetry\.py")),
    ("logging", re.compile(r"/logging/|router/logs\.py")),
    ("conversions (proto, JSON)", re.compile(
        r"google/protobuf|_message\.|upb|router/api/values\.py|router/core/memo\.py"
    )),
    ("routing and checks", re.compile(r"router/core/|router/starts\.py|router/config/")),
    ("gRPC server", re.compile(r"grpc|cygrpc|router/api/")),
    ("asyncio event loop", re.compile(r"asyncio/|uvloop|selectors|epoll")),
]  # fmt: skip


def bucket(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, pattern in BUCKETS:
            if pattern.search(frame):
                return name
    return "other (interpreter, GC, idle threads)"


def breakdown(raw: Path) -> tuple[Counter[str], int]:
    """Samples per bucket from py-spy's raw (collapsed) output: ``a;b;c count``."""
    counts: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            frames = frames[1:]
        counts[bucket(frames)] += int(n)
        total += int(n)
    return counts, total


async def run(seconds: float, concurrency: int, keep: Path | None) -> dict[str, Any]:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="meridian-profile-") as tmp:
        home = Path(tmp)
        fleet = Fleet.create(home, {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
        await fleet.start_clusters()
        router = fleet.replica("router")
        router.start(fleet.config_path, fleet.keys_dir, [])
        try:
            await router.wait_serving()
            channel = grpc.aio.insecure_channel(router.address)
            stub = pb_grpc.WorkflowRouterStub(channel)

            async def start() -> None:
                await stub.StartWorkflow(pb.StartWorkflowRequest(
                    workflow_type="EchoWorkflow", workflow_id=f"p-{uuid.uuid4()}",
                    tenant_id="bench", user_country="DE", data_class=pb.PII,
                ), timeout=30)  # fmt: skip

            await chunk(start, 300, 8)  # warm up
            raw = home / "profile.txt"
            argv = [spy, "record", "--pid", str(router.pid), "--native", "--rate", "200",
                    "--duration", str(int(seconds)), "--format", "raw", "--output", str(raw),
                    "--threads"]  # fmt: skip
            print(f"== sampling the router for {seconds:.0f} s at concurrency {concurrency}",
                  flush=True)  # fmt: skip
            spy_proc = await asyncio.create_subprocess_exec(
                *argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            await asyncio.sleep(1.0)  # py-spy attaches
            cpu0, t0, starts = cpu_seconds(router.pid), time.perf_counter(), 0
            deadline = t0 + seconds - 1.5
            while time.perf_counter() < deadline:
                xs, _ = await chunk(start, concurrency * 8, concurrency)
                starts += len(xs)
            cpu = cpu_seconds(router.pid) - cpu0
            wall = time.perf_counter() - t0
            _, err = await spy_proc.communicate()
            if spy_proc.returncode != 0 or not raw.exists():
                raise SystemExit(f"py-spy failed: {err.decode(errors='replace')[-2000:]}")
            if keep is not None:
                shutil.copy(raw, keep)
            await channel.close()
        finally:
            fleet.stop()
        counts, total = breakdown(raw)
    per_start_us = cpu / starts * 1e6
    rows = [
        {"bucket": name, "share": n / total, "cpu_us_per_start": n / total * per_start_us}
        for name, n in counts.most_common()
    ]
    return {
        "benchmark": "profile",
        "machine": machine(),
        "concurrency": concurrency,
        "starts": starts,
        "starts_per_s": starts / wall,
        "router_cpu_us_per_start": per_start_us,
        "samples": total,
        "buckets": rows,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--raw", type=Path, help="also keep py-spy's collapsed stacks here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.seconds, args.concurrency, args.raw))
    table = render(
        ["where the router's CPU goes", "share", "µs per start"],
        [(r["bucket"], f"{r['share']:.0%}", f"{r['cpu_us_per_start']:.0f}")
         for r in result["buckets"]],
    )  # fmt: skip
    head = (
        f"{result['starts']} starts at concurrency {result['concurrency']} "
        f"({result['starts_per_s']:.0f}/s); router CPU {result['router_cpu_us_per_start']:.0f} "
        f"µs per start; {result['samples']} samples\n"
    )
    emit(result, args.json, head + table)
