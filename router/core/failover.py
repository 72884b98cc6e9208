"""The failover state machine of one region: pure, no clock, no I/O.

``apply(state, event, now) -> (state, audit events)``. The adapter feeds it health
observations (already thresholded), SRE flip requests and ticks, with the time; it
persists the state and writes the audit events. Every flip, done or refused, automatic
or manual, comes out as an audit event naming its rule.

Rules, in the order they are checked for an SRE flip:

- ``reason-required``: a flip must say why.
- ``target-in-region``: the target is a cluster of this region (hence of its zone).
  ``force`` never overrides this one: a flip never crosses a border.
- ``already-active``: flipping to the active cluster changes nothing.
- ``target-healthy``: the target's latest health is good (unknown is not good).
- ``wait-period``: no flip within ``policy.wait_period`` of the last one (anti-flap).

``force=True`` (break glass, reason required) overrides ``target-healthy`` and
``wait-period``. Automatic failover (mode ``automatic``) moves off an unhealthy active to
the first healthy standby in order, at once: the wait period guards against flapping
between healthy clusters, not against leaving a dead one. Automatic failback (off by
default) returns to the primary once it has been healthy for ``failback_after`` and the
wait period has passed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

AUTOMATIC_ACTOR = "meridian"
AUTOMATIC_AUTH = "process"
# Rule names of refusals an adapter reports by name (the others are only audited).
RULE_REASON_REQUIRED = "reason-required"
# A flip of a region the config does not have (refused by the adapter: no state exists).
RULE_KNOWN_REGION = "known-region"


class Mode(enum.Enum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode = Mode.AUTOMATIC
    wait_period: float = 5.0
    auto_failback: bool = False
    failback_after: float = 60.0


@dataclass(frozen=True, slots=True)
class Flip:
    from_cluster: str
    to_cluster: str
    at: float
    actor: str
    reason: str
    rule: str
    automatic: bool
    forced: bool
    # How the actor authenticated (mtls, jwt; "process" for Meridian's own flips), and
    # the free text an SRE gave for whom they acted. Defaults keep older stored flips.
    auth: str = ""
    on_behalf_of: str = ""


@dataclass(frozen=True, slots=True)
class RegionState:
    region: str
    zone: str
    # Primary first, then standbys in failover order.
    clusters: tuple[str, ...]
    policy: Policy
    active: str
    # None: not probed yet. Only True counts as healthy.
    health: Mapping[str, bool | None]
    healthy_since: Mapping[str, float | None]
    last_flip: Flip | None = None
    # The active is unhealthy and nothing could be done; already audited once.
    stuck: bool = False

    @property
    def primary(self) -> str:
        return self.clusters[0]

    @property
    def failed_over(self) -> bool:
        return self.active != self.primary

    @classmethod
    def initial(
        cls,
        region: str,
        zone: str,
        clusters: tuple[str, ...],
        policy: Policy,
        *,
        active: str | None = None,
        last_flip: Flip | None = None,
    ) -> RegionState:
        """A fresh state; ``active`` (e.g. restored from disk) must be one of
        ``clusters``, else the primary is active."""
        unknown: Mapping[str, bool | None] = MappingProxyType(dict.fromkeys(clusters))
        return cls(
            region=region,
            zone=zone,
            clusters=clusters,
            policy=policy,
            active=active if active in clusters else clusters[0],
            health=unknown,
            healthy_since=MappingProxyType(dict.fromkeys(clusters)),
            last_flip=last_flip,
        )


# -- events in ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HealthObserved:
    cluster: str
    healthy: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FlipRequested:
    target: str
    # The authenticated principal (never a name the caller merely asserted).
    actor: str
    reason: str
    force: bool = False
    auth: str = ""
    on_behalf_of: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class FlipAdopted:
    """A flip decided elsewhere (another replica, through the shared store): adopted as
    is. It was checked against the rules where it was made; only the region is checked
    here, so a bad store entry can never move traffic out of the region."""

    flip: Flip


Event = HealthObserved | FlipRequested | Tick | FlipAdopted


# -- audit events out --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlipDone:
    region: str
    zone: str
    flip: Flip
    health: Mapping[str, bool | None]
    # Decided by another replica and adopted here from the shared store.
    adopted: bool = False


@dataclass(frozen=True, slots=True)
class FlipRefused:
    region: str
    zone: str
    target: str
    actor: str
    reason: str
    rule: str
    message: str
    automatic: bool
    forced: bool
    at: float
    health: Mapping[str, bool | None]
    auth: str = ""
    on_behalf_of: str = ""


AuditEvent = FlipDone | FlipRefused


def apply(
    state: RegionState, event: Event, now: float, *, authority: bool = True
) -> tuple[RegionState, tuple[AuditEvent, ...]]:
    """``authority``: this replica may decide automatic flips (the leader, or a replica
    that cannot reach its peers); otherwise it only observes and follows adopted flips."""
    if isinstance(event, FlipAdopted):
        return _adopt(state, event.flip)
    if isinstance(event, FlipRequested):
        return _manual(state, event, now)
    if isinstance(event, HealthObserved):
        state = _observe(state, event, now)
        if not authority:
            return state, ()
        return _automatic(state, now, event.detail if event.cluster == state.active else "")
    return _automatic(state, now, "") if authority else (state, ())


def _adopt(state: RegionState, flip: Flip) -> tuple[RegionState, tuple[AuditEvent, ...]]:
    if flip.to_cluster not in state.clusters:
        refused = FlipRefused(
            state.region, state.zone, flip.to_cluster, flip.actor, flip.reason,
            "target-in-region",
            f"adopted flip names {flip.to_cluster}, not a cluster of region {state.region}; "
            "ignored", flip.automatic, flip.forced, flip.at, state.health,
        )  # fmt: skip
        return state, (refused,)
    if flip.to_cluster == state.active and state.last_flip == flip:
        return state, ()
    new = replace(state, active=flip.to_cluster, last_flip=flip, stuck=False)
    return new, (FlipDone(state.region, state.zone, flip, state.health, adopted=True),)


def _observe(state: RegionState, event: HealthObserved, now: float) -> RegionState:
    if event.cluster not in state.clusters:
        return state
    before = state.health[event.cluster]
    health = dict(state.health)
    health[event.cluster] = event.healthy
    since = dict(state.healthy_since)
    if not event.healthy:
        since[event.cluster] = None
    elif before is not True:
        since[event.cluster] = now
    stuck = state.stuck and not (event.cluster == state.active and event.healthy)
    return replace(
        state,
        health=MappingProxyType(health),
        healthy_since=MappingProxyType(since),
        stuck=stuck,
    )


def _flip(
    state: RegionState,
    to: str,
    now: float,
    *,
    actor: str,
    reason: str,
    rule: str,
    automatic: bool,
    forced: bool,
    auth: str = AUTOMATIC_AUTH,
    on_behalf_of: str = "",
) -> tuple[RegionState, tuple[AuditEvent, ...]]:
    flip = Flip(state.active, to, now, actor, reason, rule, automatic, forced, auth, on_behalf_of)
    new = replace(state, active=to, last_flip=flip, stuck=False)
    return new, (FlipDone(state.region, state.zone, flip, state.health),)


def _refuse(
    state: RegionState,
    now: float,
    *,
    target: str,
    actor: str,
    reason: str,
    rule: str,
    message: str,
    automatic: bool,
    forced: bool,
    auth: str = AUTOMATIC_AUTH,
    on_behalf_of: str = "",
) -> tuple[AuditEvent, ...]:
    return (
        FlipRefused(
            state.region,
            state.zone,
            target,
            actor,
            reason,
            rule,
            message,
            automatic,
            forced,
            now,
            state.health,
            auth,
            on_behalf_of,
        ),
    )


def _automatic(
    state: RegionState, now: float, detail: str
) -> tuple[RegionState, tuple[AuditEvent, ...]]:
    if state.health[state.active] is False:
        why = f"active {state.active} is unhealthy" + (f" ({detail})" if detail else "")
        target = next(
            (c for c in state.clusters if c != state.active and state.health[c] is True), None
        )
        if state.policy.mode is Mode.AUTOMATIC and target is not None:
            return _flip(
                state,
                target,
                now,
                actor=AUTOMATIC_ACTOR,
                reason=why,
                rule="automatic-failover",
                automatic=True,
                forced=False,
            )
        if state.stuck:
            return state, ()  # already audited; nothing changed that would help
        if state.policy.mode is Mode.MANUAL:
            rule, message = (
                "manual-mode",
                (f"{why}; region {state.region} is in manual mode: an SRE must flip"),
            )
        else:
            rule, message = (
                "no-healthy-standby",
                (f"{why} and no standby of region {state.region} is healthy"),
            )
        events = _refuse(
            state,
            now,
            target="",
            actor=AUTOMATIC_ACTOR,
            reason=why,
            rule=rule,
            message=message,
            automatic=True,
            forced=False,
        )
        return replace(state, stuck=True), events
    policy = state.policy
    if (
        policy.mode is Mode.AUTOMATIC
        and policy.auto_failback
        and state.failed_over
        and state.health[state.primary] is True
    ):
        since = state.healthy_since[state.primary]
        waited = state.last_flip is None or now - state.last_flip.at >= policy.wait_period
        if since is not None and now - since >= policy.failback_after and waited:
            reason = (
                f"primary {state.primary} healthy for {now - since:.0f} s "
                f"(failback after {policy.failback_after:.0f} s)"
            )
            return _flip(
                state,
                state.primary,
                now,
                actor=AUTOMATIC_ACTOR,
                reason=reason,
                rule="automatic-failback",
                automatic=True,
                forced=False,
            )
    return state, ()


def failover_expected(state: RegionState) -> bool:
    """True while the active cluster is unhealthy and automatic failover has a healthy
    standby to move to: a flip is imminent (this replica's or the leader's), so a start
    that was refused before sending should wait for it rather than fail."""
    return (
        state.policy.mode is Mode.AUTOMATIC
        and state.health[state.active] is False
        and any(state.health[c] is True for c in state.clusters if c != state.active)
    )


def check_flip(state: RegionState, req: FlipRequested, now: float) -> tuple[str, str] | None:
    """The rule that refuses ``req`` and why, or None when it may proceed."""
    if not req.reason.strip():
        return RULE_REASON_REQUIRED, "a flip needs a reason (it goes into the audit log)"
    if req.target not in state.clusters:
        return "target-in-region", (
            f"{req.target} is not a cluster of region {state.region} (zone {state.zone}; "
            f"clusters: {', '.join(state.clusters)}); a flip never leaves its region, "
            "and force does not change that"
        )
    if req.target == state.active:
        return "already-active", f"{req.target} is already the active cluster of {state.region}"
    if not req.force and state.health[req.target] is not True:
        seen = "unknown" if state.health[req.target] is None else "unhealthy"
        return "target-healthy", (
            f"{req.target} is {seen}; flip to a healthy cluster, or use force with a reason "
            "to break glass"
        )
    if not req.force and state.last_flip is not None:
        elapsed = now - state.last_flip.at
        if elapsed < state.policy.wait_period:
            return "wait-period", (
                f"the last flip of {state.region} was {elapsed:.1f} s ago; the wait period is "
                f"{state.policy.wait_period:.1f} s (wait, or use force with a reason)"
            )
    return None


def _manual(
    state: RegionState, req: FlipRequested, now: float
) -> tuple[RegionState, tuple[AuditEvent, ...]]:
    refused = check_flip(state, req, now)
    if refused is not None:
        rule, message = refused
        return state, _refuse(
            state,
            now,
            target=req.target,
            actor=req.actor,
            reason=req.reason,
            rule=rule,
            message=message,
            automatic=False,
            forced=req.force,
            auth=req.auth,
            on_behalf_of=req.on_behalf_of,
        )
    return _flip(
        state,
        req.target,
        now,
        actor=req.actor,
        reason=req.reason,
        rule="manual-forced" if req.force else "manual",
        automatic=False,
        forced=req.force,
        auth=req.auth,
        on_behalf_of=req.on_behalf_of,
    )
