"""The cluster state: the view routing reads shows health as the failover state machine
has processed it, so "active cluster down" and the flip reach routing together; a
follower (no authority to flip) says a flip is coming instead."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from router.audit import Receipt
from router.clusters import ClusterState
from router.config import compile_config
from router.core.failover import (
    FlipAdopted,
    HealthObserved,
    Mode,
    Policy,
    RegionState,
    apply,
    failover_expected,
)
from router.core.health import ProbeState
from router.failover import FailoverController
from router.temporal.pool import ClientPool
from tests.helpers import default_doc, eventually

UP, DOWN = ProbeState(healthy=True), ProbeState(healthy=False, last_error="connection refused")


class GatedAudit:
    """An audit sink whose appends wait while ``gate`` is clear."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.records: list[dict[str, Any]] = []

    async def append(self, record: Mapping[str, Any]) -> Receipt | None:
        await self.gate.wait()
        self.records.append(dict(record))
        return None


async def cluster_state(*, authority: bool) -> tuple[ClusterState, GatedAudit]:
    config = compile_config(default_doc())
    audit = GatedAudit()
    failover = FailoverController(config.table, audit, authority=lambda: authority)
    state = ClusterState(ClientPool(), config, failover, tick_interval=3600)
    for name in config.table.clusters:
        state._events.put_nowait((name, UP))  # what the prober would report
    await state.start(first_probe_timeout=0.1)
    return state, audit


async def test_active_down_and_the_flip_reach_routing_together() -> None:
    state, audit = await cluster_state(authority=True)
    try:
        assert "eu-west-a" in state.view.healthy
        audit.gate.clear()  # the flip's record is slow to write
        state._events.put_nowait(("eu-west-a", DOWN))
        state._events.put_nowait(("us-east-b", DOWN))
        await asyncio.sleep(0.1)
        _, view = state.routing()
        assert view.active["eu-west"] == "eu-west-a" and "eu-west-a" in view.healthy, (
            "the view must not show the active cluster down before the flip is decided"
        )
        audit.gate.set()

        async def flipped() -> bool:
            v = state.view
            return v.active["eu-west"] == "eu-west-b" and "eu-west-a" not in v.healthy

        await eventually(flipped, "the flip and the health change published together", 5)
        assert "us-east-b" not in state.view.healthy, "the queued event after it too"
        assert [r["kind"] for r in audit.records] == ["flip"]
    finally:
        await state.close()


async def test_a_follower_says_a_flip_is_coming() -> None:
    state, _ = await cluster_state(authority=False)
    try:
        assert not state.failover_expected("eu-west")
        state._events.put_nowait(("eu-west-a", DOWN))

        async def down() -> bool:
            return "eu-west-a" not in state.view.healthy

        await eventually(down, "the health change", 5)
        assert state.view.active["eu-west"] == "eu-west-a", "a follower does not flip"
        assert state.failover_expected("eu-west"), "the leader's flip is coming"
        assert not state.failover_expected("us-east")
    finally:
        await state.close()


def region(mode: Mode = Mode.AUTOMATIC, **health: bool | None) -> RegionState:
    s = RegionState.initial("eu-west", "eu", ("a", "b", "c"), Policy(mode=mode))
    for cluster, healthy in health.items():
        if healthy is not None:
            s, _ = apply(s, HealthObserved(cluster, healthy), 0.0, authority=False)
    return s


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (region(a=True, b=True), False),
        (region(a=False, b=True), True),
        (region(a=False, b=None, c=True), True),
        (region(a=False, b=False, c=False), False),
        (region(a=False, b=None, c=None), False),
        (region(Mode.MANUAL, a=False, b=True), False),
        (region(a=None, b=True), False),
    ],
    ids=["healthy", "active-down", "third-up", "all-down", "unknown", "manual", "active-unknown"],
)
def test_failover_expected(state: RegionState, expected: bool) -> None:
    assert failover_expected(state) is expected


def test_after_the_flip_nothing_more_is_expected() -> None:
    s = region(a=False, b=True)
    flip = apply(s, HealthObserved("a", False), 1.0)[0].last_flip
    assert flip is not None
    s, _ = apply(s, FlipAdopted(flip), 1.0)
    assert s.active == "b" and not failover_expected(s)
