"""Two router replicas sharing config, flips and leadership through Consul (the in-repo
emulator of its HTTP API, in its own process), routing to real Temporal dev servers.

Timing is observed and printed, not asserted: the bounds below only catch "never".
`python -m benchmarks propagation` measures how fast a change reaches both replicas."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.fleet import ROOT, Fleet, Replica
from router.audit.query import records
from router.consul import ConsulAddress, ConsulClient
from router.v1 import router_pb2 as pb
from router.v1 import router_pb2_grpc as pb_grpc
from tests.consul_emulator import EmulatorProcess
from tests.helpers import eventually, free_port, workflow_exists

pytestmark = pytest.mark.integration


@dataclass
class Side:
    replica: Replica
    router: pb_grpc.WorkflowRouterStub
    admin: pb_grpc.RoutingAdminStub
    http: str

    async def followup_calls(self, op: str, path: str) -> tuple[float, float]:
        """(follow-ups, Temporal calls they made) from the replica's /metrics."""
        async with aiohttp.ClientSession() as session, session.get(f"{self.http}/metrics") as r:
            text = await r.text()
        count = total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("op") != op or sample.labels.get("path") != path:
                    continue
                if sample.name == "meridian_followup_temporal_calls_count":
                    count = sample.value
                elif sample.name == "meridian_followup_temporal_calls_sum":
                    total = sample.value
        return count, total

    async def topology(self) -> pb.Topology:
        topo: pb.Topology = await self.admin.GetTopology(pb.GetTopologyRequest(), timeout=5)
        return topo

    async def active(self, region: str = "eu-west") -> str:
        topo = await self.topology()
        region_pb = next(r for r in topo.regions if r.name == region)
        return next(c.name for c in region_pb.clusters if c.active)

    def audit(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in records([self.replica.audit_dir]) if r["kind"] == kind]


@dataclass
class Setup:
    fleet: Fleet
    consul: EmulatorProcess
    sides: list[Side]
    channels: list[grpc.aio.Channel]

    async def leader(self) -> tuple[Side, Side]:
        for side in self.sides:
            if (await side.topology()).is_leader:
                return side, next(s for s in self.sides if s is not side)
        raise AssertionError("no leader")


def meridian(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def req(country: str = "DE", tenant: str = "acme", dc: Any = pb.PII) -> pb.StartWorkflowRequest:
    return pb.StartWorkflowRequest(
        workflow_type="EchoWorkflow", workflow_id=f"cs-{uuid.uuid4()}", tenant_id=tenant,
        user_country=country, data_class=dc,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    # Sessions live 5 s instead of Consul's minimum 10 s (routers renew every 10/3 s), so
    # the hand-over test stays short.
    consul = EmulatorProcess(ttl_multiplier=0.5)
    consul.start()
    fleet = Fleet.create(
        tmp_path_factory.mktemp("replicas"),
        {"eu-west": ("eu", 2), "us-east": ("us", 1)},
        {"eu": ["DE", "FR"], "us": ["US"]},
        default_region="us-east",
        failover={"wait_period_ms": 1000},
    )
    channels: list[grpc.aio.Channel] = []
    try:
        await fleet.start_clusters()
        sides = []
        http: dict[str, str] = {}
        for name in ("router-1", "router-2"):
            replica = fleet.replica(name)
            port = free_port()
            http[name] = f"http://127.0.0.1:{port}"
            replica.start(
                fleet.config_path,
                fleet.keys_dir,
                ["--consul", consul.address, "--http-port", str(port)],
            )
        for replica in fleet.replicas:
            await replica.wait_serving()
            channel = grpc.aio.insecure_channel(replica.address)
            channels.append(channel)
            sides.append(Side(replica, pb_grpc.WorkflowRouterStub(channel),
                              pb_grpc.RoutingAdminStub(channel), http[replica.name]))  # fmt: skip
        yield Setup(fleet, consul, sides, channels)
    finally:
        for channel in channels:
            await channel.close()
        fleet.stop()
        consul.stop()


async def test_one_leader_both_agree(setup: Setup) -> None:
    async def agreed() -> bool:
        topos = [await s.topology() for s in setup.sides]
        return (
            sum(t.is_leader for t in topos) == 1
            and len({t.leader for t in topos}) == 1
            and (topos[0].leader in ("router-1", "router-2"))
        )

    await eventually(agreed, "one leader both replicas agree on")
    for side in setup.sides:
        topo = await side.topology()
        assert topo.consul.startswith(setup.consul.address) and topo.consul_reachable


async def test_a_home_reference_from_one_replica_opens_on_the_other(setup: Setup) -> None:
    """Behind a load balancer the replica that answers a follow-up rarely started the
    workflow: the home reference from the start sends it to one cluster, not a search."""
    a, b = setup.sides
    started = await a.router.StartWorkflow(req(), timeout=15)
    wid, where = started.workflow_id, started.decision
    assert started.home
    assert await workflow_exists(setup.fleet.cluster(where.cluster).endpoint, where.namespace, wid)
    before = await b.followup_calls("describe", "home")
    ref = pb.WorkflowRef(workflow_id=wid, tenant_id="acme", home=started.home)
    described = await b.router.DescribeWorkflow(ref, timeout=10)
    assert (described.run_id, described.location.cluster) == (started.run_id, where.cluster)
    after = await b.followup_calls("describe", "home")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1), "one follow-up, one call"
    assert described.location.home, "a follow-up hands out the reference too"

    # Refused like an unknown id: another tenant's reference, another workflow's, forged.
    other = await a.router.StartWorkflow(req(), timeout=15)
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await b.router.DescribeWorkflow(
            pb.WorkflowRef(workflow_id=f"nope-{uuid.uuid4()}", tenant_id="globex"), timeout=10
        )
    for bad in (
        pb.WorkflowRef(workflow_id=wid, tenant_id="globex", home=started.home),
        pb.WorkflowRef(workflow_id=wid, tenant_id="acme", home=other.home),
        pb.WorkflowRef(workflow_id=wid, tenant_id="acme", home=started.home[:-4] + "AAAA"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await b.router.DescribeWorkflow(bad, timeout=10)
        assert refused.value.code() == unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert refused.value.details() == f"workflow {wid} not found for tenant {bad.tenant_id}"
    # Another tenant cannot take the id over either (nor learn its run).
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await b.router.StartWorkflow(
            pb.StartWorkflowRequest(
                workflow_type="EchoWorkflow", workflow_id=wid, tenant_id="globex",
                user_country="DE", data_class=pb.PII,
            ), timeout=15,
        )  # fmt: skip
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert started.run_id not in (taken.value.details() or "")


async def test_config_change_reaches_both(setup: Setup, tmp_path: Path) -> None:
    doc = yaml.safe_load(setup.fleet.config_path.read_text())
    doc["tenants"] = {"initech": {"residency_zone": "eu"}}
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(doc))
    diff = meridian("config", "diff", str(new), "--consul", setup.consul.address,
                    "--against", str(setup.fleet.config_path))  # fmt: skip
    assert "+ tenants.initech" in diff.stdout, diff.stdout + diff.stderr
    t0 = time.monotonic()
    out = meridian("config", "push", str(new), "--consul", setup.consul.address)
    assert out.returncode == 0, out.stderr
    version = out.stdout.split("(version ")[1].split(")")[0]

    async def both_route_initech_to_eu() -> bool:
        for side in setup.sides:
            d = await side.router.ExplainRoute(req("US", "initech"), timeout=5)
            if d.config_version != version or d.region != "eu-west":
                return False
        return True

    await eventually(both_route_initech_to_eu, "the change on both replicas")
    took = time.monotonic() - t0
    print(f"\nconfig change visible in both replicas' decisions after {took:.2f} s "
          "(including the push CLI's start-up)")  # fmt: skip
    for side in setup.sides:
        topo = await side.topology()
        assert topo.config_version == version and "consul:meridian/config@" in topo.config_source
        accepted = [r for r in side.audit("config.change") if r["outcome"] == "accepted"]
        assert accepted and accepted[-1]["version"] == version


async def test_invalid_change_is_rejected_by_both(setup: Setup, tmp_path: Path) -> None:
    before = [(await s.topology()).config_version for s in setup.sides]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        setup.fleet.config_path.read_text().replace("home_region: eu-west", "home_region: mars")
    )
    refused = meridian("config", "push", str(bad), "--consul", setup.consul.address)
    assert (
        refused.returncode == 2 and "zones.eu.home_region: unknown region 'mars'" in refused.stderr
    )
    # Written around the validator, straight into KV: every replica rejects it whole.
    async with aiohttp.ClientSession() as http:
        url = f"http://{setup.consul.address}/v1/kv/meridian/config"
        async with http.put(url, data=bad.read_bytes()) as resp:
            assert await resp.json() is True

    async def both_rejected() -> bool:
        topos = [await s.topology() for s in setup.sides]
        return all(t.HasField("last_rejected") and "mars" in " ".join(t.last_rejected.errors)
                   for t in topos)  # fmt: skip

    await eventually(both_rejected, "both replicas to reject the change")
    for side, version in zip(setup.sides, before, strict=True):
        topo = await side.topology()
        assert topo.config_version == version, "the last good config keeps serving"
        assert "consul:meridian/config@" in topo.last_rejected.source
        resp = await side.router.StartWorkflow(req(), timeout=10)
        assert resp.started and resp.decision.region == "eu-west"
        rejected = [r for r in side.audit("config.change") if r["outcome"] == "rejected"]
        assert any("unknown region 'mars'" in e for e in rejected[-1]["errors"])


async def test_a_flip_by_one_is_seen_by_the_other(setup: Setup) -> None:
    one, two = setup.sides
    await one.admin.SetActiveCluster(pb.SetActiveClusterRequest(
        region="eu-west", cluster="eu-west-b", reason="patching a", actor="sre-1"
    ), timeout=10)  # fmt: skip

    async def two_follows() -> bool:
        return await two.active() == "eu-west-b"

    await eventually(two_follows, "replica 2 to adopt the flip")
    d = await two.router.ExplainRoute(req(), timeout=5)
    assert d.cluster == "eu-west-b" and d.failed_over
    adopted = [r for r in two.audit("flip") if r["outcome"] == "adopted"]
    assert adopted[-1]["actor"] == "sre-1" and adopted[-1]["reason"] == "patching a"
    done = [r for r in one.audit("flip") if r["outcome"] == "done"]
    assert done[-1]["to_cluster"] == "eu-west-b"
    # And back, through the other replica.
    await asyncio.sleep(1.1)  # the wait period
    await two.admin.SetActiveCluster(pb.SetActiveClusterRequest(
        region="eu-west", cluster="eu-west-a", reason="done patching", actor="sre-2"
    ), timeout=10)  # fmt: skip

    async def one_follows() -> bool:
        return await one.active() == "eu-west-a"

    await eventually(one_follows, "replica 1 to adopt the flip back")


async def test_concurrent_flips_never_lose_an_update(setup: Setup) -> None:
    """Two SREs flip the same region at the same moment through different replicas,
    each under their own name. A lost update would be both told OK while one flip
    silently overwrites the other: then the flip both replicas (and Consul) end up
    with would not be the acknowledged one's, or two would be acknowledged."""
    one, two = setup.sides
    outcomes: list[str] = []
    for i in range(6):
        target = "eu-west-b" if i % 2 == 0 else "eu-west-a"
        actors = [f"sre-{n}-round-{i}" for n in (1, 2)]
        calls = [
            side.admin.SetActiveCluster(pb.SetActiveClusterRequest(
                region="eu-west", cluster=target, reason=f"race {i}", force=True, actor=actor,
            ), timeout=10)
            for actor, side in zip(actors, (one, two), strict=True)
        ]  # fmt: skip
        acknowledged = []
        results = await asyncio.gather(*calls, return_exceptions=True)
        for actor, result in zip(actors, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                assert result.code() in (
                    grpc.StatusCode.ABORTED,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ), (result.code(), result.details())
                outcomes.append(result.code().name)
            else:
                assert not isinstance(result, BaseException), result
                outcomes.append("OK")
                acknowledged.append(actor)
        assert len(acknowledged) == 1, f"round {i}: acknowledged {acknowledged}"
        (winner,) = acknowledged

        async def converged(target: str = target, winner: str = winner) -> bool:
            for side in (one, two):
                region = next(r for r in (await side.topology()).regions if r.name == "eu-west")
                active = next(c.name for c in region.clusters if c.active)
                if (active, region.last_flip.actor) != (target, winner):
                    return False
            return True

        await eventually(converged, f"both replicas on {target} by {winner} after round {i}")
        kv = ConsulClient(ConsulAddress.parse(setup.consul.address))
        try:
            _, entry = await kv.get("meridian/active/eu-west")
        finally:
            await kv.close()
        assert f'"actor": "{winner}"'.encode() in entry["Value"], "Consul holds the winner's"
    print(f"\nconcurrent flip outcomes: {outcomes}")
    # Races really happened, and every one had exactly one winner.
    assert "ABORTED" in outcomes or "FAILED_PRECONDITION" in outcomes


async def test_leader_death_hands_automatic_failover_to_the_other(setup: Setup) -> None:
    leader, follower = await setup.leader()
    primary = setup.fleet.cluster("eu-west-a")
    primary.kill()

    async def both_on_b() -> bool:
        return await leader.active() == await follower.active() == "eu-west-b"

    await eventually(both_on_b, "automatic failover seen by both")
    decided = [r for r in leader.audit("flip") if r["rule"] == "automatic-failover"]
    followed = [r for r in follower.audit("flip") if r["rule"] == "automatic-failover"]
    assert decided[-1]["outcome"] == "done", "the leader decides"
    assert followed[-1]["outcome"] == "adopted", "the follower only follows"
    primary.start()
    await primary.wait_ready()

    async def a_healthy_everywhere() -> bool:
        for side in setup.sides:
            region = next(r for r in (await side.topology()).regions if r.name == "eu-west")
            if not all(c.healthy for c in region.clusters):
                return False
        return True

    await eventually(a_healthy_everywhere, "eu-west-a healthy again")
    await asyncio.sleep(1.1)
    await follower.admin.SetActiveCluster(pb.SetActiveClusterRequest(
        region="eu-west", cluster="eu-west-a", reason="primary back", actor="sre"
    ), timeout=10)  # fmt: skip
    await eventually(lambda: _is(leader, "eu-west-a"), "the old leader to follow the flip back")

    # The leader dies without a word: its session expires, the other takes the lock.
    assert leader.replica.proc is not None
    leader.replica.proc.kill()
    t0 = time.monotonic()

    async def follower_leads() -> bool:
        return (await follower.topology()).is_leader

    await eventually(follower_leads, "hand-over of leadership", timeout=60)
    print(f"\nleadership handed over {time.monotonic() - t0:.1f} s after the leader died "
          "(session TTL 5 s here, lock delay 1 s)")  # fmt: skip
    primary.kill()
    await eventually(lambda: _is(follower, "eu-west-b"), "failover decided by the new leader")
    decided = [r for r in follower.audit("flip") if r["rule"] == "automatic-failover"]
    assert decided[-1]["outcome"] == "done", "the new leader decided it"
    primary.start()
    await primary.wait_ready()


async def _is(side: Side, cluster: str) -> bool:
    return await side.active() == cluster


async def test_consul_lost_and_back(setup: Setup) -> None:
    alive = [s for s in setup.sides if s.replica.proc and s.replica.proc.poll() is None]
    assert alive
    setup.consul.stop()

    async def unreachable() -> bool:
        return not any([(await s.topology()).consul_reachable for s in alive])

    await eventually(unreachable, "replicas to notice Consul is gone")
    for side in alive:  # still routing, on the current config
        resp = await side.router.StartWorkflow(req("US", dc=pb.PUBLIC), timeout=10)
        where = resp.decision
        endpoint = setup.fleet.cluster(where.cluster).endpoint
        assert resp.started and await workflow_exists(endpoint, where.namespace, resp.workflow_id)
    # Back on the same port: an empty store whose index went backwards.
    setup.consul = EmulatorProcess(setup.consul.port, ttl_multiplier=0.5)
    setup.consul.start()

    async def reachable() -> bool:
        return all([(await s.topology()).consul_reachable for s in alive])

    await eventually(reachable, "replicas to reconnect", timeout=30)
