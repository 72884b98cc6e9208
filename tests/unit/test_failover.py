"""The failover state machine (router/core/failover.py): event sequences as tables, and
a property-based test that its invariants hold for any sequence."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.core.failover import (
    Event,
    FlipDone,
    FlipRefused,
    FlipRequested,
    HealthObserved,
    Mode,
    Policy,
    RegionState,
    Tick,
    apply,
    check_flip,
)

CLUSTERS = ("eu-a", "eu-b", "eu-c")


def fresh(policy: Policy | None = None, *, healthy: tuple[str, ...] = CLUSTERS) -> RegionState:
    s = RegionState.initial("eu-west", "eu", CLUSTERS, policy or Policy())
    for c in healthy:
        s, _ = apply(s, HealthObserved(c, True), 0.0)
    return s


def up(c: str) -> HealthObserved:
    return HealthObserved(c, True)


def down(c: str) -> HealthObserved:
    return HealthObserved(c, False, "connection refused")


def flip(target: str, *, force: bool = False, reason: str = "maintenance") -> FlipRequested:
    return FlipRequested(target, "sre@example", reason, force)


@dataclass
class Step:
    at: float
    event: Event
    active: str
    audit: str | None = None  # "done:<rule>" / "refused:<rule>" / None


def run(state: RegionState, steps: list[Step]) -> None:
    for i, step in enumerate(steps):
        state, events = apply(state, step.event, step.at)
        assert state.active == step.active, f"step {i}: active {state.active}, want {step.active}"
        got = None
        if events:
            (e,) = events
            got = f"done:{e.flip.rule}" if isinstance(e, FlipDone) else f"refused:{e.rule}"
        assert got == step.audit, f"step {i}: audit {got}, want {step.audit}"


SEQUENCES = {
    "primary dies, first healthy standby takes over": [
        Step(1, down("eu-a"), "eu-b", "done:automatic-failover"),
    ],
    "standby order is respected when the first standby is down": [
        Step(1, down("eu-b"), "eu-a"),
        Step(2, down("eu-a"), "eu-c", "done:automatic-failover"),
    ],
    "no healthy standby: refused once, then flips when one recovers": [
        Step(1, down("eu-b"), "eu-a"),
        Step(2, down("eu-c"), "eu-a"),
        Step(3, down("eu-a"), "eu-a", "refused:no-healthy-standby"),
        Step(4, Tick(), "eu-a"),
        Step(5, down("eu-a"), "eu-a"),
        Step(6, up("eu-c"), "eu-c", "done:automatic-failover"),
    ],
    "failover is not held back by the wait period": [
        Step(1, down("eu-a"), "eu-b", "done:automatic-failover"),
        Step(1.5, down("eu-b"), "eu-c", "done:automatic-failover"),
    ],
    "primary recovers: traffic stays (failback is manual by default)": [
        Step(1, down("eu-a"), "eu-b", "done:automatic-failover"),
        Step(2, up("eu-a"), "eu-b"),
        Step(500, Tick(), "eu-b"),
    ],
    "manual flip back once healthy and after the wait period": [
        Step(1, down("eu-a"), "eu-b", "done:automatic-failover"),
        Step(2, flip("eu-a"), "eu-b", "refused:target-healthy"),
        Step(3, up("eu-a"), "eu-b"),
        Step(4, flip("eu-a"), "eu-b", "refused:wait-period"),
        Step(7, flip("eu-a"), "eu-a", "done:manual"),
    ],
    "force overrides health and wait period": [
        Step(1, flip("eu-b"), "eu-b", "done:manual"),
        Step(2, down("eu-c"), "eu-b"),
        Step(3, flip("eu-c", force=True), "eu-c", "done:manual-forced"),
    ],
    "force never crosses the region": [
        Step(1, flip("us-a", force=True), "eu-a", "refused:target-in-region"),
    ],
    "reason is required, even with force": [
        Step(1, flip("eu-b", reason="  "), "eu-a", "refused:reason-required"),
        Step(2, flip("eu-b", reason="", force=True), "eu-a", "refused:reason-required"),
    ],
    "flip to the active is refused": [
        Step(1, flip("eu-a"), "eu-a", "refused:already-active"),
    ],
}


@pytest.mark.parametrize("name", list(SEQUENCES))
def test_sequences(name: str) -> None:
    run(fresh(), SEQUENCES[name])


def test_unknown_health_is_not_healthy() -> None:
    s = RegionState.initial("eu-west", "eu", CLUSTERS, Policy())
    run(s, [Step(1, flip("eu-b"), "eu-a", "refused:target-healthy")])
    s2, events = apply(s, down("eu-a"), 1)
    assert s2.active == "eu-a" and isinstance(events[0], FlipRefused)
    assert events[0].rule == "no-healthy-standby"


def test_manual_mode_never_flips_by_itself() -> None:
    run(
        fresh(Policy(mode=Mode.MANUAL)),
        [
            Step(1, down("eu-a"), "eu-a", "refused:manual-mode"),
            Step(2, down("eu-a"), "eu-a"),
            Step(3, Tick(), "eu-a"),
            Step(4, flip("eu-b"), "eu-b", "done:manual"),
        ],
    )


def test_automatic_failback_after_the_primary_is_healthy_long_enough() -> None:
    policy = Policy(auto_failback=True, failback_after=30, wait_period=5)
    run(
        fresh(policy),
        [
            Step(10, down("eu-a"), "eu-b", "done:automatic-failover"),
            Step(12, up("eu-a"), "eu-b"),
            Step(41, Tick(), "eu-b"),
            Step(42, Tick(), "eu-a", "done:automatic-failback"),
        ],
    )


def test_failback_timer_restarts_when_the_primary_flaps() -> None:
    policy = Policy(auto_failback=True, failback_after=30, wait_period=5)
    run(
        fresh(policy),
        [
            Step(10, down("eu-a"), "eu-b", "done:automatic-failover"),
            Step(12, up("eu-a"), "eu-b"),
            Step(30, down("eu-a"), "eu-b"),
            Step(31, up("eu-a"), "eu-b"),
            Step(50, Tick(), "eu-b"),
            Step(61, Tick(), "eu-a", "done:automatic-failback"),
        ],
    )


def test_audit_events_carry_actor_reason_rule_and_health() -> None:
    s = fresh()
    s, (done,) = apply(s, down("eu-a"), 5.0)
    assert isinstance(done, FlipDone)
    assert (done.flip.from_cluster, done.flip.to_cluster, done.flip.actor) == (
        "eu-a",
        "eu-b",
        "meridian",
    )
    assert "eu-a is unhealthy (connection refused)" in done.flip.reason
    assert done.health == {"eu-a": False, "eu-b": True, "eu-c": True}
    s, (refused,) = apply(s, flip("eu-a"), 6.0)
    assert isinstance(refused, FlipRefused)
    assert (refused.actor, refused.reason, refused.rule) == (
        "sre@example",
        "maintenance",
        "target-healthy",
    )
    assert "eu-a is unhealthy" in refused.message and refused.at == 6.0


def test_check_flip_messages_name_the_rule_inputs() -> None:
    s = fresh()
    s, _ = apply(s, flip("eu-b"), 1.0)
    rule, msg = check_flip(s, flip("eu-c"), 2.5) or ("", "")
    assert rule == "wait-period" and "1.5 s ago" in msg and "5.0 s" in msg
    rule, msg = check_flip(s, flip("us-east-a", force=True), 2.5) or ("", "")
    assert rule == "target-in-region" and "force does not change that" in msg


def test_restored_active_must_belong_to_the_region() -> None:
    assert RegionState.initial("r", "z", CLUSTERS, Policy(), active="eu-c").active == "eu-c"
    assert RegionState.initial("r", "z", CLUSTERS, Policy(), active="gone").active == "eu-a"


# -- invariants under any sequence ------------------------------------------------------

TARGETS = [*CLUSTERS, "us-a", "ap-a"]
events_st = st.one_of(
    st.builds(HealthObserved, st.sampled_from(CLUSTERS), st.booleans()),
    st.builds(
        FlipRequested,
        st.sampled_from(TARGETS),
        st.just("sre"),
        st.sampled_from(["", "why"]),
        st.booleans(),
    ),
    st.just(Tick()),
)


@settings(max_examples=500, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(0, 20), events_st), max_size=40),
    mode=st.sampled_from(list(Mode)),
    failback=st.booleans(),
)
def test_invariants(steps: list[tuple[float, Event]], mode: Mode, failback: bool) -> None:
    policy = Policy(mode=mode, wait_period=5, auto_failback=failback, failback_after=10)
    state = RegionState.initial("eu-west", "eu", CLUSTERS, policy)
    now = 0.0
    for dt, event in steps:
        now += dt
        before = state
        state, audit = apply(state, event, now)
        # Exactly one active, always a cluster of the region.
        assert state.active in CLUSTERS
        done = [e for e in audit if isinstance(e, FlipDone)]
        assert len(audit) <= 1
        if state.active != before.active:
            # Every change of the active cluster is one audited flip, and vice versa.
            assert len(done) == 1
            f = done[0].flip
            assert (f.from_cluster, f.to_cluster, f.at) == (before.active, state.active, now)
            assert f.reason.strip()
            if f.automatic:
                assert mode is Mode.AUTOMATIC
                # Health is observed first, then acted on: the target is healthy now.
                assert state.health[f.to_cluster] is True
                assert done[0].health[f.to_cluster] is True
                if f.rule == "automatic-failback":
                    assert failback and f.to_cluster == CLUSTERS[0]
                    assert before.last_flip is None or now - before.last_flip.at >= 5
                else:
                    assert state.health[f.from_cluster] is False
            elif not f.forced:
                assert before.health[f.to_cluster] is True
                assert before.last_flip is None or now - before.last_flip.at >= 5
        else:
            assert not done
        for e in audit:
            if isinstance(e, FlipRefused) and not e.automatic:
                assert isinstance(event, FlipRequested)


@pytest.mark.parametrize(
    ("region", "reason", "field", "rule"),
    [
        ("eu-west", "", "reason", "reason-required"),
        ("eu-west", "   ", "reason", "reason-required"),
        ("mars", "drill", "region", "known-region"),
    ],
    ids=["empty-reason", "blank-reason", "unknown-region"],
)
async def test_every_refused_sre_flip_is_audited(
    region: str, reason: str, field: str, rule: str
) -> None:
    """The adapter leaves the rules to the state machine, so a flip refused for a missing
    reason (or an unknown region) is audited like any other refusal, then reported as
    INVALID_ARGUMENT naming the field."""
    from router import metrics
    from router.audit import MemoryAuditSink
    from router.config import compile_config
    from router.errors import InvalidArgument
    from router.failover import FailoverController
    from tests.helpers import default_doc

    audit = MemoryAuditSink()
    ctl = FailoverController(compile_config(default_doc()).table, audit)
    label = "" if rule == "known-region" else region  # never the caller's unknown name
    counted = metrics.flips.value(label, "manual", "refused", rule)
    with pytest.raises(InvalidArgument) as info:
        await ctl.request(region, FlipRequested("eu-west-b", "sre-1", reason))
    assert info.value.field == field
    assert metrics.flips.value(label, "manual", "refused", rule) == counted + 1
    assert metrics.flips.value("mars", "manual", "refused", rule) == 0
    (record,) = audit.records
    assert (record["kind"], record["outcome"], record["rule"]) == ("flip", "refused", rule)
    assert record["actor"] == "sre-1" and record["region"] == region
    assert ctl.states["eu-west"].active == "eu-west-a"
