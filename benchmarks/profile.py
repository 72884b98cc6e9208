"""Where the router's CPU goes per start: a `meridian serve` (plaintext, auth off, audit
fsynced with signed checkpoints, payloads encrypted, metrics on) in front of one dev
server, driven at concurrency 32 by StartWorkflow calls from this process.

Two samplers watch the router over the same window:
- Linux `perf record` (on-CPU samples only, every thread, native and kernel) splits the
  router's CPU by the shared object it ran in: gRPC's C core, the Temporal SDK's Rust
  core, the kernel (sockets, fsync, epoll), OpenSSL/cryptography, protobuf (upb), and the
  Python interpreter;
- `py-spy record --gil` (Python frames of the thread holding the GIL) splits the
  interpreter's share by what Python code it ran: audit, codec, gRPC's Python layer, the
  Temporal client's Python layer, conversions, metrics, logging, routing, the event loop.
µs per start = share x the router's CPU time per start (from /proc, same window).

Needs perf (Debian: linux-perf; root, or perf_event_paranoid <= 1) and py-spy
(``pip install py-spy``). ``--raw DIR`` keeps both samplers' output (py-spy's collapsed
stacks make a flame graph with flamegraph.pl or speedscope).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from benchmarks.common import emit, machine, progress, render, start_request
from benchmarks.fleet import ROOT, Fleet, cpu_seconds, free_port
from benchmarks.router_vs_direct import chunk
from router.v1 import router_pb2_grpc as pb_grpc

PYTHON = "Python interpreter"

# Where perf's on-CPU samples ran: (bucket, pattern on the shared object's name).
DSOS: list[tuple[str, re.Pattern[str]]] = [
    ("gRPC C core", re.compile(r"cygrpc|libgrpc")),
    ("Temporal SDK core (Rust)", re.compile(r"temporal_sdk_bridge")),
    ("kernel (sockets, fsync, epoll)", re.compile(r"kernel|vmlinux|\[vdso\]")),
    ("encryption (cryptography, OpenSSL)", re.compile(r"_rust\.abi3|libcrypto|libssl|_openssl")),
    ("protobuf (upb)", re.compile(r"_message\.abi3|upb")),
    ("libc (malloc, memcpy, locks)", re.compile(r"libc\.so|libm\.so|ld-linux|libstdc")),
    (PYTHON, re.compile(r".")),  # libpython, the python binary, stdlib C modules
]

# What the interpreter ran, by py-spy's Python frames: (bucket, pattern on a frame
# "function (file:line)"), tried from the innermost frame out; the first that matches
# decides. Stdlib frames (json, hashlib, asyncio's internals) do not match on their
# own: they count for whoever called them, the event loop last.
FRAMES: list[tuple[str, re.Pattern[str]]] = [
    ("audit (records, hashing, fsync, checkpoints)", re.compile(r"router/audit/|audit/")),
    ("codec (encryption)", re.compile(r"router/codec/|codec/|cryptography")),
    ("Temporal client (Python layer, request building)", re.compile(
        r"temporalio/|router/temporal/|temporal/gateway"
    )),
    ("metrics and tracing", re.compile(r"opentelemetry|router/metrics|router/telemetry")),
    ("logging", re.compile(r"logging/|router/logs")),
    ("conversions (proto, JSON, memo)", re.compile(
        r"google/protobuf|api/values\.py|core/memo\.py|json_format"
    )),
    ("routing, validation, authorization", re.compile(
        r"router/core/|core/|starts\.py|router/config/|router/auth/|api/auth\.py"
    )),
    ("gRPC server (Python layer, servicers)", re.compile(r"grpc/|_cython|router/api/|api/")),
    ("asyncio event loop", re.compile(r"asyncio/|selectors")),
]  # fmt: skip


def frame_bucket(stack: list[str]) -> str:
    for frame in reversed(stack):
        for name, pattern in FRAMES:
            if pattern.search(frame):
                return name
    return "other Python"


def py_spy_buckets(raw: Path) -> Counter[str]:
    """Samples per bucket from py-spy's raw (collapsed) output: ``a;b;c count``."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[frame_bucket(stack.split(";"))] += int(n)
    return counts


def perf_buckets(data: Path) -> dict[str, float]:
    """perf's on-CPU samples per DSO bucket (percent of the router's samples)."""
    out = subprocess.run(
        ["perf", "report", "-i", str(data), "--stdio", "--sort", "dso", "-q",
         "--percent-limit", "0"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    counts: dict[str, float] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2 or not parts[0].endswith("%"):
            continue
        dso = " ".join(parts[1:])
        name = next(n for n, pattern in DSOS if pattern.search(dso))
        counts[name] = counts.get(name, 0.0) + float(parts[0].rstrip("%"))
    return counts


def combine(dsos: dict[str, float], frames: Counter[str]) -> list[tuple[str, float]]:
    """Shares of the router's CPU: perf's, with the interpreter's split by py-spy's."""
    total = sum(dsos.values()) or 1.0
    shares = {name: v / total for name, v in dsos.items() if name != PYTHON}
    python = dsos.get(PYTHON, 0.0) / total
    sampled = sum(frames.values()) or 1
    for name, n in frames.items():
        shares[f"Python: {name}"] = python * n / sampled
    return sorted(shares.items(), key=lambda kv: -kv[1])


async def bare_grpc_server(concurrency: int, n: int = 4000) -> float:
    """CPU µs per call of a grpc.aio server answering StartWorkflow with a canned
    response, in its own process (benchmarks.floors)."""
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.floors", "server", "--port", str(port),
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        await asyncio.wait_for(proc.stdout.readline(), 30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.WorkflowRouterStub(channel)

            async def call() -> None:
                await stub.StartWorkflow(start_request("g"), timeout=30)

            await chunk(call, 500, 16)
            before = cpu_seconds(proc.pid)
            xs, _ = await chunk(call, n, concurrency)
            return (cpu_seconds(proc.pid) - before) / len(xs) * 1e6
    finally:
        proc.terminate()
        await proc.wait()


async def plain_temporal_client(endpoint: str, concurrency: int) -> float:
    """CPU µs per start of a plain temporalio client, measured by itself."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.floors", "client", "--endpoint", endpoint,
        "--namespace", "eu-west", "--concurrency", str(concurrency),
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    cpu: float = json.loads(out)["cpu_us_per_start"]
    return cpu


async def run(
    seconds: float, concurrency: int, keep: Path | None, *, native: bool = False
) -> dict[str, Any]:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed (Debian: apt-get install linux-perf)")
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
                await stub.StartWorkflow(start_request("p"), timeout=30)

            await chunk(start, 300, 8)  # warm up
            raw, data = home / "py-spy.txt", home / "perf.data"
            window = int(seconds)
            progress(f"== sampling the router for {window} s at concurrency {concurrency}")
            samplers = [
                await asyncio.create_subprocess_exec(
                    spy, "record", "--pid", str(router.pid), "--gil",
                    # --native pauses the router for each sample (slower, same shares);
                    # without it, time in C/Cython/Rust counts for its Python caller.
                    *(["--native"] if native else ["--nonblocking"]),
                    "--rate", "250", "--duration", str(window), "--format", "raw",
                    "--output", str(raw),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                ),
                await asyncio.create_subprocess_exec(
                    "perf", "record", "-F", "499", "-p", str(router.pid), "-o", str(data),
                    "--", "sleep", str(window),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                ),
            ]  # fmt: skip
            cpu0, t0, starts = cpu_seconds(router.pid), time.perf_counter(), 0
            while time.perf_counter() < t0 + window:
                xs, _ = await chunk(start, concurrency * 4, concurrency)
                starts += len(xs)
            cpu = cpu_seconds(router.pid) - cpu0
            wall = time.perf_counter() - t0
            for proc in samplers:
                _, err = await proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"sampler failed: {err.decode(errors='replace')[-2000:]}")
            frames, dsos = py_spy_buckets(raw), perf_buckets(data)
            progress("== the floors: a bare gRPC server, a plain temporalio client")
            grpc_floor = await bare_grpc_server(concurrency)
            temporal_floor = await plain_temporal_client(
                fleet.cluster("eu-west-a").endpoint, concurrency
            )
            if keep is not None:
                shutil.copy(raw, keep / "py-spy.txt")
                shutil.copy(data, keep / "perf.data")
            await channel.close()
        finally:
            fleet.stop()
    per_start_us = cpu / starts * 1e6
    return {
        "benchmark": "profile",
        "machine": machine(),
        "concurrency": concurrency,
        "starts": starts,
        "starts_per_s": starts / wall,
        "router_cpu_us_per_start": per_start_us,
        "perf_dso_percent": dsos,
        "grpc_server_alone_cpu_us_per_call": grpc_floor,
        "temporal_client_alone_cpu_us_per_start": temporal_floor,
        "py_spy_samples": dict(frames),
        "buckets": [
            {"bucket": name, "share": share, "cpu_us_per_start": share * per_start_us}
            for name, share in combine(dsos, frames)
        ],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks profile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--raw", type=Path, help="keep the samplers' output in this directory")
    parser.add_argument(
        "--native", action="store_true",
        help="py-spy --native: C, Cython and Rust frames too (pauses the router per sample)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.raw is not None:
        args.raw.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(run(args.seconds, args.concurrency, args.raw, native=args.native))
    table = render(
        ["where the router's CPU goes", "share", "µs per start"],
        [(r["bucket"], f"{r['share']:.0%}", f"{r['cpu_us_per_start']:.0f}")
         for r in result["buckets"]],
    )  # fmt: skip
    head = (
        f"{result['starts']} starts at concurrency {result['concurrency']} "
        f"({result['starts_per_s']:.0f}/s); router CPU {result['router_cpu_us_per_start']:.0f} "
        f"µs per start\n"
    )
    floor = (
        result["grpc_server_alone_cpu_us_per_call"]
        + result["temporal_client_alone_cpu_us_per_start"]
    )
    tail = (
        f"\nthe floor: a bare gRPC server {result['grpc_server_alone_cpu_us_per_call']:.0f} "
        f"µs per call + a plain temporalio client "
        f"{result['temporal_client_alone_cpu_us_per_start']:.0f} µs per start = {floor:.0f} µs; "
        f"the router's own work above it: {result['router_cpu_us_per_start'] - floor:.0f} µs"
    )
    emit(result, args.json, head + table + tail)
