"""Meridian's Consul side against the in-process Consul emulator: the watch loop,
check-and-set flips between two replicas, leader election and hand-over, and the config
layers a replica builds from what it watches."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.audit import MemoryAuditSink
from router.config import compile_config
from router.config.layers import Layer
from router.config.sources import ConfigSources
from router.consul import ConsulAddress, ConsulClient, KVSnapshot, Leadership, Watcher
from router.core.failover import FlipRequested
from router.errors import FlipConflict
from router.failover import FailoverController, StateFile
from router.live import ConsulFlipStore, Live
from tests.consul_emulator import ConsulEmulator
from tests.helpers import default_doc, eventually


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


OPEN: list[ConsulClient] = []


@pytest.fixture
async def emulator() -> AsyncIterator[tuple[ConsulEmulator, Clock]]:
    clock = Clock()
    emu = ConsulEmulator(clock=clock)
    await emu.start()
    try:
        yield emu, clock
    finally:
        while OPEN:
            await OPEN.pop().close()
        await emu.stop()


def client(emu: ConsulEmulator) -> ConsulClient:
    c = ConsulClient(ConsulAddress.parse(emu.address))
    OPEN.append(c)
    return c


async def test_watcher_dispatches_changes_only(emulator: tuple[ConsulEmulator, Clock]) -> None:
    emu, _ = emulator
    seen: list[KVSnapshot] = []

    async def on_change(snap: KVSnapshot) -> None:
        seen.append(snap)

    c = client(emu)
    w = Watcher(c)
    await c.put("meridian/config", "a: 1")
    await w.poll_once(on_change, block=False)
    task = asyncio.create_task(w.poll_once(on_change, block=True))
    await asyncio.sleep(0.1)
    assert not task.done(), "a blocking query waits for a change"
    await c.put("meridian/active/eu-west", '{"active": "eu-west-b", "flip": null}')
    await asyncio.wait_for(task, 5)
    assert [sorted(s.entries) for s in seen] == [
        ["meridian/config"],
        ["meridian/active/eu-west", "meridian/config"],
    ]
    await c.close()


async def ignore(_: KVSnapshot) -> None:
    return None


def controller(
    table: Any, c: ConsulClient, tmp: Path, name: str
) -> tuple[FailoverController, Watcher]:
    watcher = Watcher(c)
    store = ConsulFlipStore(c, watcher, StateFile(tmp / f"{name}.json"))
    ctl = FailoverController(table, MemoryAuditSink(), store=store)
    return ctl, watcher


async def test_concurrent_flips_one_wins_one_conflicts(
    emulator: tuple[ConsulEmulator, Clock], tmp_path: Path
) -> None:
    emu, _ = emulator
    table = compile_config(default_doc()).table
    a, wa = controller(table, client(emu), tmp_path, "a")
    b, wb = controller(table, client(emu), tmp_path, "b")
    for ctl in (a, b):
        for cluster in ("eu-west-a", "eu-west-b"):
            await ctl.observe(cluster, True)
    # Both replicas read the store, then both flip before either sees the other's write.
    await wa.poll_once(ignore, block=False)
    await wb.poll_once(ignore, block=False)
    await a.request("eu-west", FlipRequested("eu-west-b", "sre-a", "maintenance"))
    with pytest.raises(FlipConflict, match="changed concurrently"):
        await b.request("eu-west", FlipRequested("eu-west-b", "sre-b", "maintenance too"))
    assert b.states["eu-west"].active == "eu-west-a", "the loser changed nothing"
    _, entry = await client(emu).get("meridian/active/eu-west")
    assert b'"actor": "sre-a"' in entry["Value"]
    # Once it has seen the winner's write, the other replica's flip goes through (CAS on
    # the index it now knows).
    await wb.poll_once(ignore, block=False)
    await b.request("eu-west", FlipRequested("eu-west-b", "sre-b", "retry", force=True))
    _, entry = await client(emu).get("meridian/active/eu-west")
    assert b'"actor": "sre-b"' in entry["Value"]


async def test_one_leader_and_hand_over(emulator: tuple[ConsulEmulator, Clock]) -> None:
    emu, clock = emulator
    first = Leadership(client(emu), "r1", ttl=10, lock_delay=1)
    second = Leadership(client(emu), "r2", ttl=10, lock_delay=1)
    tasks = [asyncio.create_task(x.run()) for x in (first, second)]

    async def until(check: Any, what: str) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(what)

    try:
        await until(lambda: first.is_leader or second.is_leader, "a leader")
        leader, other = (first, second) if first.is_leader else (second, first)
        await until(lambda: other.leader_id == leader.replica_id, "the follower knows the leader")
        assert not other.is_leader
        # The leader dies: its session is no longer renewed; the TTL runs out.
        tasks[0 if leader is first else 1].cancel()
        clock.now += 11
        emu.expire_sessions()
        await asyncio.sleep(0.3)
        assert not other.is_leader, "the lock delay holds the lock for a moment"
        clock.now += 2
        await until(lambda: other.is_leader, "hand-over after the lock delay")
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_live_layers_and_rejections(
    emulator: tuple[ConsulEmulator, Clock], tmp_path: Path
) -> None:
    emu, _ = emulator
    c = client(emu)
    base = ConfigSources(paths=(), files=(Layer("file:base.yaml", default_doc()),))
    live = Live(c, cache_dir=tmp_path, replica_id="r1")
    await c.put(
        "meridian/config", yaml.safe_dump({"tenants": {"initech": {"residency_zone": "us"}}})
    )
    sources, problems = await live.initial(base)
    config = sources.resolve()
    assert not problems
    assert config.table.tenants["initech"].residency_zone == "us"
    assert config.source.startswith("file:base.yaml + consul:meridian/config@")
    assert live.cache_file.exists(), "the last good Consul document is cached for a cold start"

    # A bad document is left out (the files still serve) and reported.
    await c.put("meridian/config", yaml.safe_dump({"default_region": "mars"}))
    cold = Live(c, cache_dir=tmp_path / "cold", replica_id="r2")
    sources, problems = await cold.initial(base)
    assert "initech" not in sources.resolve().table.tenants
    assert problems and "default_region: unknown region 'mars'" in str(problems[0])
    assert not cold.cache_file.exists(), "only a good document is cached"

    # Consul down at start: the cached last good document serves.
    await c.close()
    await emu.stop()
    offline = Live(client(emu), cache_dir=tmp_path, replica_id="r3")
    sources, problems = await offline.initial(base)
    assert sources.resolve().table.tenants["initech"].residency_zone == "us"
    assert offline.authority(), "cut off from peers, a replica decides flips itself"


async def test_a_change_whose_handling_failed_is_handled_again(
    emulator: tuple[ConsulEmulator, Clock],
) -> None:
    emu, _ = emulator
    calls: list[int] = []

    async def flaky(snap: KVSnapshot) -> None:
        calls.append(len(snap.entries))
        if len(calls) == 1:
            raise RuntimeError("handler bug")

    c = client(emu)
    await c.put("meridian/config", "a: 1")
    w = Watcher(c)
    with pytest.raises(RuntimeError):
        await w.poll_once(flaky, block=False)
    await asyncio.wait_for(w.poll_once(flaky, block=True), 5)  # the old index: returns at once
    assert calls == [1, 1] and w.last is not None


async def test_a_consul_change_that_fails_transiently_is_applied_later(
    emulator: tuple[ConsulEmulator, Clock], tmp_path: Path
) -> None:
    """A valid document arrives while the audit log is briefly unwritable: it is not
    recorded as handled and dropped; the controller applies it once the log recovers,
    without a second change in Consul."""
    from router.core.failover import Flip, RegionState
    from tests.unit.seams import Audit, controller

    class Follower:
        def __init__(self) -> None:
            self.states: dict[str, RegionState] = {}

        async def adopt(self, region: str, flip: Flip) -> None:
            return None

    emu, _ = emulator
    audit = Audit()
    ctl = controller(default_doc(), tmp_path / "keys", audit, retry_initial=0.02)
    await ctl.start()
    live = Live(client(emu), cache_dir=tmp_path, replica_id="r1")
    try:
        await live.start(ctl, Follower())
        audit.fail = 2
        await client(emu).put(
            "meridian/config", yaml.safe_dump({"tenants": {"initech": {"residency_zone": "us"}}})
        )

        async def applied() -> bool:
            return "initech" in ctl.config.table.tenants

        await eventually(applied, "the Consul change applied after the log recovered", 10)
        assert [r["outcome"] for r in audit.journal.records("config.change")] == [
            "loaded", "accepted",
        ]  # fmt: skip
        assert live.cache_file.exists()
    finally:
        await live.stop()
        await ctl.close()


async def test_an_unreachable_consul_is_said_in_words() -> None:
    """Not aiohttp's repr (its connection key, SSL context): where, and what failed."""
    from benchmarks.fleet import free_port
    from router.errors import ConsulUnavailable

    port = free_port()  # nothing listens there
    client = ConsulClient(ConsulAddress.parse(f"127.0.0.1:{port}", "meridian/", None))
    try:
        with pytest.raises(ConsulUnavailable) as info:
            await client.get("meridian/config")
    finally:
        await client.close()
    assert str(info.value).startswith(f"consul 127.0.0.1:{port}: cannot connect: ")
    assert "ConnectionKey" not in str(info.value) and "ssl" not in str(info.value)
