"""The failover adapter: feeds health and SRE requests to the pure state machine
(router/core/failover.py), audits every outcome, persists the active clusters, and
tells the service when the view changed.

Order of effects for a flip: the audit record is written first, then the state file,
then the new active cluster is published (by the caller, ``router.clusters``). A flip
whose record cannot be written does not happen. SREs' flips come here too (``request``
and ``preview``); their dry-run impact is ``router.admin``'s.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Protocol

from router import metrics
from router.audit import AuditSink, flip_record
from router.core.failover import (
    RULE_KNOWN_REGION,
    RULE_REASON_REQUIRED,
    AuditEvent,
    Event,
    Flip,
    FlipAdopted,
    FlipDone,
    FlipRefused,
    FlipRequested,
    HealthObserved,
    RegionState,
    Tick,
    apply,
)
from router.core.model import RoutingTable
from router.errors import FlipConflict, FlipRefusedError, FlipStoreUnavailable, InvalidArgument

log = logging.getLogger(__name__)


class StateFile:
    """The active cluster and last flip of each region, in one JSON file written
    atomically (temp file, fsync, rename), so a router restart keeps SREs' choices."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> dict[str, tuple[str, Flip | None]]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("failover state %s unreadable (%s); starting from primaries", self.path, exc)
            return {}
        out: dict[str, tuple[str, Flip | None]] = {}
        for region, entry in doc.get("regions", {}).items():
            flip = entry.get("last_flip")
            try:
                out[region] = (entry["active"], Flip(**flip) if flip else None)
            except (KeyError, TypeError):
                log.error("failover state %s: bad entry for %s; ignored", self.path, region)
        return out

    def save(self, states: Mapping[str, RegionState]) -> None:
        self.write({r: (s.active, s.last_flip) for r, s in states.items()})

    def write(self, entries: Mapping[str, tuple[str, Flip | None]]) -> None:
        doc = {
            "version": 1,
            "regions": {
                r: {"active": active, "last_flip": asdict(flip) if flip else None}
                for r, (active, flip) in entries.items()
            },
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps(doc, indent=2))
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        except OSError as exc:
            raise FlipStoreUnavailable(
                f"failover state {self.path} cannot be written: {exc.strerror or exc}"
            ) from exc


class FlipStore(Protocol):
    """Where decided flips are kept: a local file (one router), or Consul KV with
    check-and-set (replicas). ``publish`` returns False when someone else changed the
    region's entry since we last saw it (nothing was written)."""

    def load(self) -> dict[str, tuple[str, Flip | None]]: ...

    async def publish(
        self, region: str, state: RegionState, states: Mapping[str, RegionState]
    ) -> bool: ...

    @property
    def shared(self) -> bool:
        """True when other replicas read it: then a flip is published before it is
        audited and applied (the store decides who wins)."""
        ...


class LocalStore(StateFile):
    shared = False

    async def publish(
        self, region: str, state: RegionState, states: Mapping[str, RegionState]
    ) -> bool:
        self.save(states)
        return True


class SharedFileStore(StateFile):
    """Flips in one state file shared by the workers of a ``serve --workers N`` (one
    host, no Consul): written under an exclusive lock with check-and-set against the
    entry this worker last saw (``seen``), like Consul's ModifyIndex, so two workers
    flipping a region at once cannot both win; each worker follows the file
    (``router.workers.FileFollower``)."""

    shared = True

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.lock_path = path.with_name(path.name + ".lock")
        self.seen: dict[str, tuple[str, Flip | None]] = {}

    def load(self) -> dict[str, tuple[str, Flip | None]]:
        entries = super().load()
        self.seen = dict(entries)
        return entries

    async def publish(
        self, region: str, state: RegionState, states: Mapping[str, RegionState]
    ) -> bool:
        return await asyncio.to_thread(self._check_and_set, region, state)

    def _check_and_set(self, region: str, state: RegionState) -> bool:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
                current = StateFile.load(self)
                if current.get(region) != self.seen.get(region):
                    return False  # another worker changed it since: its flip wins
                current[region] = (state.active, state.last_flip)
                self.write(current)
                self.seen[region] = current[region]
                return True
        except OSError as exc:
            raise FlipStoreUnavailable(
                f"failover state {self.path} cannot be locked: {exc.strerror or exc}"
            ) from exc


class FailoverController:
    """Feeds health and SRE requests to the pure state machine, one event at a time,
    and carries out what it decides: the audit record first, then the store. It holds
    no callbacks: whoever calls it (``router.clusters.ClusterState``) publishes the new
    view after each call."""

    def __init__(
        self,
        table: RoutingTable,
        audit: AuditSink,
        *,
        store: FlipStore | None = None,
        authority: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        # Whether this replica decides automatic flips (the leader, or cut off from peers).
        self._authority = authority
        self._store = store
        self._clock = clock
        self._lock = asyncio.Lock()
        self._states: dict[str, RegionState] = {}
        self._sync(table, restore=store.load() if store else {})

    @property
    def states(self) -> Mapping[str, RegionState]:
        return self._states

    async def sync(self, table: RoutingTable) -> None:
        """Track exactly the table's regions (a config change). Under the lock: a flip
        being committed (waiting on its audit record) finishes on the old regions first,
        and can never write back a state whose clusters the new config changed."""
        async with self._lock:
            self._sync(table, restore={})

    def _sync(self, table: RoutingTable, restore: Mapping[str, tuple[str, Flip | None]]) -> None:
        """Keep each active cluster that still exists (a restored or previous active
        that is gone falls back to the primary)."""
        states: dict[str, RegionState] = {}
        for name, region in table.regions.items():
            clusters = tuple(c.name for c in region.clusters)
            old = self._states.get(name)
            if old is not None and old.clusters == clusters:
                states[name] = replace(old, zone=region.zone, policy=region.failover)
                continue
            active, last = (old.active, old.last_flip) if old else restore.get(name, ("", None))
            if active and active not in clusters:
                log.warning(
                    "region %s: active cluster %s is no longer in config; using %s",
                    name,
                    active,
                    clusters[0],
                )
            states[name] = RegionState.initial(
                name, region.zone, clusters, region.failover, active=active, last_flip=last
            )
        self._states = states

    def active(self) -> dict[str, str]:
        return {r: s.active for r, s in self._states.items()}

    def region_of(self, cluster: str) -> str | None:
        return next((r for r, s in self._states.items() if cluster in s.clusters), None)

    async def observe(self, cluster: str, healthy: bool, detail: str = "") -> None:
        region = self.region_of(cluster)
        if region is not None:
            await self._apply(region, HealthObserved(cluster, healthy, detail))

    async def adopt(self, region: str, flip: Flip) -> None:
        """A flip another replica decided (seen in the shared store)."""
        if region in self._states:
            await self._apply(region, FlipAdopted(flip))

    async def tick(self, health: Mapping[str, tuple[bool, str]]) -> None:
        """Time-based rules, and reconciliation with the prober's ``health`` (cluster ->
        (healthy, detail)): a health change whose flip could not be audited (so was not
        applied) is applied again here, until it can be."""
        for cluster, (healthy, detail) in health.items():
            region = self.region_of(cluster)
            if region is not None and self._states[region].health.get(cluster) is not healthy:
                await self._apply(region, HealthObserved(cluster, healthy, detail))
        for region in list(self._states):
            await self._apply(region, Tick())

    def preview(
        self, region: str, req: FlipRequested
    ) -> tuple[RegionState, RegionState, tuple[AuditEvent, ...]]:
        """What ``req`` would do now: no audit, no state change (a dry run)."""
        before = self._state(region)
        after, events = apply(before, req, self._clock(), authority=self._authority())
        return before, after, events

    async def request(self, region: str, req: FlipRequested) -> tuple[RegionState, RegionState]:
        """An SRE flip: applied (and audited), or refused (audited, then raised). Every
        refusal goes through the state machine's rules and into the log, a missing
        reason and an unknown region included."""
        async with self._lock:
            state = self._states.get(region)
            if state is None:
                refused = self._unknown_region(region, req)
                await self._audit.append(flip_record(refused))
                _count(refused)
                raise self._unknown(region)
            after, events = await self._commit(region, req)
        for e in events:
            if isinstance(e, FlipRefused):
                if e.rule == RULE_REASON_REQUIRED:
                    raise InvalidArgument(
                        field="reason", reason=f"required (rule {e.rule}): {e.message}"
                    )
                raise FlipRefusedError(e.message, rule=e.rule, region=region)
        return state, after

    def _unknown_region(self, region: str, req: FlipRequested) -> FlipRefused:
        return FlipRefused(
            region, "", req.target, req.actor, req.reason, RULE_KNOWN_REGION,
            f"unknown region {region!r}", automatic=False, forced=req.force,
            at=self._clock(), health={}, auth=req.auth, on_behalf_of=req.on_behalf_of,
        )  # fmt: skip

    def _state(self, region: str) -> RegionState:
        state = self._states.get(region)
        if state is None:
            raise self._unknown(region)
        return state

    def _unknown(self, region: str) -> InvalidArgument:
        known = ", ".join(self._states)
        return InvalidArgument(field="region", reason=f"unknown region {region!r} (known: {known})")

    async def _apply(self, region: str, event: Event) -> None:
        async with self._lock:
            if region in self._states:
                await self._commit(region, event)

    async def _commit(
        self, region: str, event: Event
    ) -> tuple[RegionState, tuple[AuditEvent, ...]]:
        before = self._states[region]
        after, events = apply(before, event, self._clock(), authority=self._authority())
        decided = any(isinstance(e, FlipDone) and not e.adopted for e in events)
        staged = {**self._states, region: after}
        store = self._store
        # Shared store first: it decides between concurrent flips (check-and-set).
        if decided and store is not None and store.shared:  # noqa: SIM102
            if not await store.publish(region, after, staged):
                if isinstance(event, FlipRequested):
                    raise FlipConflict(
                        f"region {region} changed concurrently (another SRE or replica "
                        "flipped it): nothing was written; check `meridian status` and retry",
                        region=region,
                    )
                return before, ()  # automatic: another replica's decision will be adopted
        for e in events:
            await self._audit.append(flip_record(e))
        changed = after.active != before.active or after.last_flip != before.last_flip
        if changed and store is not None and not store.shared:
            await store.publish(region, after, staged)
        for e in events:
            _count(e)
            if isinstance(e, FlipDone):
                f = e.flip
                log.warning(
                    "region %s: %s -> %s by %s (%s%s): %s", region, f.from_cluster,
                    f.to_cluster, f.actor, f.rule, ", adopted" if e.adopted else "", f.reason,
                )  # fmt: skip
        self._states = {**self._states, region: after}
        return after, events


def _count(event: AuditEvent) -> None:
    """meridian_flips_total: by region, kind (automatic, manual, adopted), result, rule."""
    if isinstance(event, FlipDone):
        f = event.flip
        kind = "adopted" if event.adopted else "automatic" if f.automatic else "manual"
        metrics.flips.add(1, event.region, kind, "done", f.rule)
    else:
        kind = "automatic" if event.automatic else "manual"
        # A region the config does not know is the caller's input: as a label it would
        # grow a series per typo (or per attacker's string). Counted under "".
        region = "" if event.rule == RULE_KNOWN_REGION else event.region
        metrics.flips.add(1, region, kind, "refused", event.rule)
