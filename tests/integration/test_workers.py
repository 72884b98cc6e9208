"""`meridian serve --workers 2` on one port, in front of real Temporal dev servers: both
workers take starts (each into its own audit chain, both verifiable), the workflows are
where the router said (asked of the cluster), only worker 0 decides an automatic
failover and worker 1 adopts it, a killed worker is restarted, one that cannot start
(an invalid config file) does not stop the serving one, and stopping the supervisor
stops every worker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from benchmarks.fleet import ROOT, Fleet, Replica
from router.audit.query import records
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually, workflow_exists

pytestmark = pytest.mark.integration


def workers_of(supervisor: int) -> dict[int, int]:
    """index -> PID of the supervisor's worker processes (from /proc)."""
    out: dict[int, int] = {}
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    for pid in map(int, children):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"--worker-index" in argv:
            out[int(argv[argv.index(b"--worker-index") + 1])] = pid
    return out


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


async def start_on_a_new_connection(address: str) -> pb.StartWorkflowResponse:
    """A new channel is a new TCP connection: the kernel picks the worker."""
    async with grpc.aio.insecure_channel(address) as channel:
        resp: pb.StartWorkflowResponse = await pb_grpc.WorkflowRouterStub(channel).StartWorkflow(
            pb.StartWorkflowRequest(
                workflow_type="EchoWorkflow", workflow_id=f"wk-{uuid.uuid4()}",
                tenant_id="acme", user_country="DE", data_class=pb.PII,
            ), timeout=15,
        )  # fmt: skip
        return resp


async def started_at_the_source(fl: Fleet, address: str) -> None:
    """A start through the router, checked on the Temporal cluster it names, not on the
    router's word."""
    resp = await start_on_a_new_connection(address)
    assert resp.started, resp
    endpoint = fl.cluster(resp.decision.cluster).endpoint
    assert await workflow_exists(endpoint, resp.decision.namespace, resp.workflow_id)


def chain(replica: Replica, index: int, kind: str) -> list[dict[str, object]]:
    return [r for r in records([replica.audit_dir / f"worker-{index}"]) if r["kind"] == kind]


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[tuple[Fleet, Replica]]:
    fleet = Fleet.create(
        tmp_path, {"eu-west": ("eu", 2)}, {"eu": ["DE"]},
        failover={"wait_period_ms": 500},
    )  # fmt: skip
    try:
        await fleet.start_clusters()
        router = fleet.replica("router")
        router.start(fleet.config_path, fleet.keys_dir, ["--workers", "2"])
        await router.wait_serving()

        async def both() -> bool:
            # The supervisor says so once every worker printed its ready line (serving,
            # its audit chain open); a worker that dies before that fails the start.
            return "all 2 workers ready" in router.log() and len(workers_of(router.pid)) == 2

        await eventually(both, "both workers ready")
        yield fleet, router
    finally:
        fleet.stop()


async def test_two_workers_share_the_port_and_one_decides_failover(
    fleet: tuple[Fleet, Replica],
) -> None:
    fl, router = fleet
    # Both workers take starts, each into its own chain.
    started: list[pb.StartWorkflowResponse] = []
    for _ in range(60):
        started.append(await start_on_a_new_connection(router.address))
        if chain(router, 0, "start.outcome") and chain(router, 1, "start.outcome"):
            break
    assert chain(router, 0, "start.outcome") and chain(router, 1, "start.outcome"), (
        f"{len(started)} connections all reached one worker"
    )
    a = fl.cluster("eu-west-a")
    for resp in started[-3:]:
        assert await workflow_exists(a.endpoint, "eu-west", resp.workflow_id)
    verify = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "router.cli", "audit", "verify",
         str(router.audit_dir / "worker-0"), str(router.audit_dir / "worker-1")],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # The primary dies: worker 0 (the authority) fails over, worker 1 adopts its flip.
    a.kill()

    async def on_standby() -> bool:
        resp = await start_on_a_new_connection(router.address)
        return resp.decision.cluster == "eu-west-b"

    await eventually(on_standby, "starts on the standby", timeout=30)

    async def followed() -> bool:
        return bool(chain(router, 1, "flip"))

    await eventually(followed, "worker 1 to record the flip")
    decided = [f for f in chain(router, 0, "flip") if f["outcome"] == "done"]
    assert [(f["to_cluster"], f["automatic"]) for f in decided] == [("eu-west-b", True)]
    assert [f["outcome"] for f in chain(router, 1, "flip")] == ["adopted"]
    for _ in range(6):  # whichever worker answers, the standby takes the start
        resp = await start_on_a_new_connection(router.address)
        assert resp.decision.cluster == "eu-west-b"
        assert await workflow_exists(fl.cluster("eu-west-b").endpoint, "eu-west", resp.workflow_id)


async def test_a_killed_worker_is_restarted_and_stop_stops_all(
    fleet: tuple[Fleet, Replica],
) -> None:
    fl, router = fleet
    before = workers_of(router.pid)
    os.kill(before[1], signal.SIGKILL)

    async def restarted() -> bool:
        return workers_of(router.pid).get(1) not in (None, before[1])

    await eventually(restarted, "worker 1 restarted")
    for _ in range(4):
        await started_at_the_source(fl, router.address)
    assert workers_of(router.pid)[0] == before[0], "worker 0 untouched"
    pids = list(workers_of(router.pid).values())
    assert router.proc is not None
    router.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(router.proc.wait, 30) == 0

    async def all_gone() -> bool:
        return not [p for p in pids if alive(p)]

    await eventually(all_gone, "every worker to stop with the supervisor", timeout=10)


async def test_a_worker_that_cannot_start_does_not_stop_the_serving_one(
    fleet: tuple[Fleet, Replica],
) -> None:
    """An invalid edit, rejected on SIGHUP by both workers (they serve the last good
    config); worker 1 is killed and cannot start with the file: worker 0 keeps serving
    while worker 1 is retried, and once the file is fixed worker 1 is back and both
    reload."""
    fl, router = fleet
    good = fl.config_path.read_text()
    fl.config_path.write_text(good + "\ndefault_region: nowhere\n")
    assert router.proc is not None
    router.proc.send_signal(signal.SIGHUP)
    before = workers_of(router.pid)
    os.kill(before[1], signal.SIGKILL)

    async def crash_looping() -> bool:
        return "worker 1 keeps dying" in router.log()

    await eventually(crash_looping, "worker 1 to crash loop", timeout=60)
    assert "Worker 0 keeps serving; next try in" in router.log()
    assert workers_of(router.pid)[0] == before[0], "worker 0 untouched"
    for _ in range(4):
        await started_at_the_source(fl, router.address)

    fl.config_path.write_text(good)

    async def back() -> bool:
        return "worker 1 restarted and ready; reloading workers" in router.log()

    await eventually(back, "worker 1 back after the fix", timeout=60)
    assert set(workers_of(router.pid)) == {0, 1} and workers_of(router.pid)[0] == before[0]
    for _ in range(4):
        await started_at_the_source(fl, router.address)
