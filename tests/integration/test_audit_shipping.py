"""Audit evidence leaves the box and covers key rotations, against real processes.

Shipping: a `meridian serve` router (a `benchmarks.fleet` with one real Temporal dev
server) ships its chain to the in-test OTLP collector while a steady stream of starts
runs; the collector is stopped for a while (a sink outage) and started again; the router
is SIGKILLed and restarted on the same audit directory. In the end every seq from 1 to
the log's last arrived, each with its hash, in order within each Export batch; the
duplicates (at-least-once) are counted and reported.

Key rotation: `meridian keys rotate` while a router and a codec server run: the tool's
own chain, the router's and the codec server's each record the region, the old and the
new key id, and never key material.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from benchmarks.fleet import Fleet, Replica, free_port
from router.audit import verify
from router.audit.query import records
from router.audit.ship import ATTR_CHAIN, ATTR_HASH, ATTR_SEQ
from router.codec import FileKeyProvider
from router.devstack import die_with_parent
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.helpers import eventually
from tests.integration.conftest import ROOT
from tests.otlp_collector import Collector

pytestmark = pytest.mark.integration


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet.create(tmp_path, {"eu-west": ("eu", 1)}, {"eu": ["DE"]})
    try:
        await f.start_clusters()
        yield f
    finally:
        f.stop()


def eu_req() -> pb.StartWorkflowRequest:
    return pb.StartWorkflowRequest(
        workflow_type="EchoWorkflow", workflow_id=f"ship-{uuid.uuid4()}", tenant_id="acme",
        user_country="DE", data_class=pb.PII,
    )  # fmt: skip


class Stream:
    """A steady stream of starts (one every ``every`` s, each its own call) against
    whatever router answers at ``address``, counting acknowledged and failed starts."""

    def __init__(self, address: str, every: float = 0.02) -> None:
        self.address, self.every = address, every
        self.acked: list[pb.StartWorkflowResponse] = []
        self.failed = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        calls: set[asyncio.Task[None]] = set()
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = pb_grpc.WorkflowRouterStub(channel)

            async def one() -> None:
                try:
                    self.acked.append(await stub.StartWorkflow(eu_req(), timeout=5))
                except grpc.aio.AioRpcError:
                    self.failed += 1  # the router is down (killed): refused, never lost

            while not self._stop.is_set():
                task = asyncio.create_task(one())
                calls.add(task)
                task.add_done_callback(calls.discard)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.every)
            await asyncio.gather(*calls)

    def stop(self) -> None:
        self._stop.set()


async def test_shipping_survives_a_sink_outage_and_a_sigkill(fleet: Fleet) -> None:
    collector = Collector()
    port = free_port()
    collector.start(port)
    router: Replica = fleet.replica("router")
    router.start(fleet.config_path, fleet.keys_dir, ["--audit-ship", f"http://127.0.0.1:{port}"])
    await router.wait_serving()
    stream = Stream(router.address)
    running = asyncio.create_task(stream.run())
    try:
        await asyncio.sleep(1.5)
        collector.stop()  # the sink is down ...
        outage_from = len(stream.acked)
        await asyncio.sleep(3.0)
        during_outage = len(stream.acked) - outage_from
        collector.start(port)  # ... and back
        await asyncio.sleep(1.5)
        os.kill(router.pid, signal.SIGKILL)  # mid-stream, mid-batch maybe
        router.proc.wait()  # type: ignore[union-attr]
        killed_at = len(stream.acked)
        await asyncio.sleep(0.5)
        await router.restart()  # same audit dir, same cursor
        await asyncio.sleep(2.0)
    finally:
        stream.stop()
        await running
    assert during_outage > 20, "starts went on while the sink was down"
    assert len(stream.acked) > killed_at, "starts went on after the restart"

    audit_dir = router.audit_dir
    chain = list(records([audit_dir]))
    last = chain[-1]["seq"]

    async def all_arrived() -> bool:
        got = {r.attributes[ATTR_SEQ] for r in collector.received_logs()}
        return got >= set(range(1, last + 1))

    try:
        await eventually(all_arrived, f"seq 1..{last} at the collector", timeout=90)
        async with grpc.aio.insecure_channel(router.address) as channel:
            admin = pb_grpc.RoutingAdminStub(channel)

            async def caught_up() -> pb.AuditShipping | None:
                topo = await admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
                s = topo.audit_shipping
                return s if s.lag == 0 and s.shipped_seq >= last else None

            ship = await eventually(caught_up, "status: lag 0", timeout=30)
            assert ship.sink == f"http://127.0.0.1:{port}" and ship.chain == "router"
            assert ship.last_error == "" and ship.last_shipped.seconds > 0
    finally:
        collector.stop()

    assert verify([audit_dir]).ok
    want = {r["seq"]: r for r in chain}
    got = collector.received_logs()
    by_batch: dict[int, list[int]] = {}
    for r in got:
        seq = r.attributes[ATTR_SEQ]
        by_batch.setdefault(r.batch, []).append(seq)
        if seq in want:
            assert r.attributes[ATTR_HASH] == want[seq]["hash"], f"seq {seq}: another hash"
            assert json.loads(r.body) == want[seq]
        assert r.attributes[ATTR_CHAIN] == "router"
    for seqs in by_batch.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "in order within a batch"
    # Every acknowledged start's receipt is among what arrived.
    arrived = {(r.attributes[ATTR_SEQ], r.attributes[ATTR_HASH]) for r in got}
    for resp in stream.acked:
        assert (resp.receipt.sequence, resp.receipt.hash) in arrived
    seqs = [r.attributes[ATTR_SEQ] for r in got]
    duplicates = len(seqs) - len(set(seqs))
    print(
        f"\nshipped seq 1..{last} ({len(stream.acked)} acknowledged starts, {stream.failed} "
        f"refused while the router was down; {during_outage} acknowledged during the sink "
        f"outage) in {len(by_batch)} batches; {duplicates} duplicate(s) "
        "(at-least-once: a receiver drops them by seq)"
    )


def meridian(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MERIDIAN_HOME": str(home)}
    env.pop("MERIDIAN_AUDIT_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False, env=env,
    )  # fmt: skip


def start_codec_server(fleet: Fleet, audit_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        die_with_parent([
            sys.executable, "-m", "router.cli", "codec-server", "--region", "eu-west",
            "--config", str(fleet.config_path), "--keys-dir", str(fleet.keys_dir),
            "--listen", f"127.0.0.1:{free_port()}", "--audit-dir", str(audit_dir),
        ]),
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "MERIDIAN_CODEC_TOKENS_EU_WEST": "t" * 32},
    )  # fmt: skip


async def test_key_rotations_are_audited_by_every_process_that_notices(
    fleet: Fleet, tmp_path: Path
) -> None:
    router = fleet.replica("router")
    router.start(fleet.config_path, fleet.keys_dir, [])
    codec_audit = tmp_path / "audit-codec-eu-west"
    codec = start_codec_server(fleet, codec_audit)
    try:
        await router.wait_serving()
        provider = FileKeyProvider(fleet.keys_dir)
        old = provider.load("eu-west").active
        home = tmp_path / "home"
        keys, config = str(fleet.keys_dir), str(fleet.config_path)
        out = meridian("keys", "rotate", "--region", "eu-west", "--keys-dir", keys, "--config",
                       config, home=home)  # fmt: skip
        assert out.returncode == 0, out.stderr
        new = provider.load("eu-west").active
        assert new != old

        def rotations(directory: Path) -> list[dict[str, Any]]:
            return [r for r in records([directory]) if r["kind"] == "key.rotation"]

        async def noticed() -> bool:
            return bool(rotations(router.audit_dir)) and bool(rotations(codec_audit))

        await eventually(noticed, "the router and the codec server to record the rotation")
        seen = {
            "keys-rotate": rotations(home / "audit-keys"),
            "router": rotations(router.audit_dir),
            "codec-server": rotations(codec_audit),
        }
        for component, (rec,) in seen.items():
            assert (rec["component"], rec["region"]) == (component, "eu-west")
            assert (rec["previous_key_id"], rec["key_id"]) == (old, new)
        assert seen["keys-rotate"][0]["os_user"]
        material = [base64.b64encode(k.material).decode()
                    for k in provider.load("eu-west").keys.values()]  # fmt: skip
        for directory in (home / "audit-keys", router.audit_dir, codec_audit):
            text = "".join(f.read_text() for f in directory.glob("audit-*.jsonl"))
            assert not any(m in text for m in material), f"key material in {directory}"
            assert verify([directory]).ok
        # The router encrypts new payloads with the new key from the next start on.
        async with grpc.aio.insecure_channel(router.address) as channel:
            stub = pb_grpc.WorkflowRouterStub(channel)
            deadline = time.monotonic() + 10
            while True:
                resp = await stub.StartWorkflow(eu_req(), timeout=10)
                decision = next(r for r in records([router.audit_dir])
                                if r.get("seq") == resp.decision.receipt.sequence)  # fmt: skip
                if decision["encryption_key_id"] == new or time.monotonic() > deadline:
                    break
            assert decision["encryption_key_id"] == new
            rotation_seq = seen["router"][0]["seq"]
            assert rotation_seq < decision["seq"], "audited before the key was used"
    finally:
        codec.send_signal(signal.SIGTERM)
        try:
            codec.wait(10)
        except subprocess.TimeoutExpired:
            codec.kill()
            codec.wait()
