"""The two costs a router cannot go below, measured alone in their own processes so the
kernel's accounting is theirs (used by ``benchmarks profile``):

- ``server``: a grpc.aio server answering StartWorkflow with a canned response — gRPC's
  cost per call (Python layer, C core, sockets) with nothing behind it;
- ``client``: a plain temporalio client starting workflows on a dev server — the
  Temporal client's cost per start; prints its own CPU µs per start as JSON.

    python -m benchmarks.floors server --port P
    python -m benchmarks.floors client --endpoint HOST:PORT --namespace NS --n N --concurrency C
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import uuid
from typing import Any

import grpc

from benchmarks.router_vs_direct import chunk
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc


class Canned(pb_grpc.WorkflowRouterServicer):
    async def StartWorkflow(self, request: Any, context: Any) -> pb.StartWorkflowResponse:
        return pb.StartWorkflowResponse(
            workflow_id=request.workflow_id, run_id="r", started=True,
            decision=pb.RouteDecision(zone="eu", region="eu-west", cluster="eu-west-a"),
        )  # fmt: skip


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_WorkflowRouterServicer_to_server(Canned(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def client(endpoint: str, namespace: str, n: int, concurrency: int) -> None:
    from temporalio.client import Client

    direct = await Client.connect(endpoint, namespace=namespace)

    async def start() -> None:
        await direct.start_workflow(
            "EchoWorkflow", id=f"f-{uuid.uuid4()}", task_queue=f"{namespace}-EchoWorkflow-queue"
        )

    await chunk(start, 200, 16)  # warm up
    before = cpu_seconds()
    xs, wall = await chunk(start, n, concurrency)
    used = cpu_seconds() - before
    print(json.dumps({"cpu_us_per_start": used / len(xs) * 1e6, "starts_per_s": len(xs) / wall}))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floors")
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("server")
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("client")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--namespace", required=True)
    c.add_argument("--n", type=int, default=3000)
    c.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    if args.what == "server":
        asyncio.run(serve(args.port))
    else:
        asyncio.run(client(args.endpoint, args.namespace, args.n, args.concurrency))


if __name__ == "__main__":
    main()
