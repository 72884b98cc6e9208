"""Replicas sharing one live config and one set of active clusters through Consul.

``Live`` owns one replica's Consul watch and leader election. It hands a changed config
document to the config controller (``router.config.runtime``), which applies it whole,
rejects it whole (audited, shown in status) or retries a transient failure; it hands a
changed active-cluster entry to whoever follows flips (a ``FlipFollower``: the cluster
state). Flips this replica decides are written with check-and-set (``ConsulFlipStore``).
``Live`` knows nothing of the application object: no import or object cycle.

Consul unreachable at start: serve from the last good Consul document cached on disk (or
the files alone) and keep retrying; lost later: keep serving what is current. A replica
that cannot reach Consul also cannot know the leader, so it decides automatic flips
itself: every candidate is a cluster of the same region, so the worst case is replicas
choosing different standbys of one region for a while, never a border crossing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from router import metrics
from router.config.runtime import ConfigController, Outcome
from router.config.sources import ConfigSources, text_layer
from router.consul import (
    ConsulClient,
    KVSnapshot,
    Leadership,
    Watcher,
    flip_from_json,
    flip_to_json,
)
from router.core.failover import Flip, RegionState
from router.errors import ConfigError, ConsulUnavailable, FieldError
from router.failover import StateFile

log = logging.getLogger(__name__)

ACTIVE_PREFIX = "active/"


@dataclass(frozen=True, slots=True)
class LiveStatus:
    replica_id: str
    leader: str
    is_leader: bool
    consul: str
    consul_reachable: bool


class FlipFollower(Protocol):
    """Who follows the active clusters written to Consul (``router.clusters``)."""

    @property
    def states(self) -> Mapping[str, RegionState]: ...

    async def adopt(self, region: str, flip: Flip) -> None: ...


class ConsulFlipStore:
    """Flips in Consul KV, one key per region, written with check-and-set against the
    ModifyIndex this replica last saw; also cached locally for a start without Consul."""

    shared = True

    def __init__(self, client: ConsulClient, watcher: Watcher, cache: StateFile) -> None:
        self.client = client
        self.watcher = watcher
        self.cache = cache

    def load(self) -> dict[str, tuple[str, Flip | None]]:
        return self.cache.load()

    async def publish(
        self, region: str, state: RegionState, states: Mapping[str, RegionState]
    ) -> bool:
        key = self.client.address.key(ACTIVE_PREFIX + region)
        seen = self.watcher.last.entries.get(key) if self.watcher.last else None
        try:
            ok = await self.client.put(
                key, flip_to_json(state.active, state.last_flip), cas=seen[1] if seen else 0
            )
        except ConsulUnavailable as exc:
            # Cut off from the peers: act locally (the same region, never a border).
            log.error("flip of %s kept locally; consul unreachable: %s", region, exc.message)
            ok = True
        if ok:
            self.cache.save(states)
        return ok


class ConsulAuthority:
    """Whether this replica decides automatic flips: it leads, or it cannot reach its
    peers (then nobody could tell it otherwise)."""

    def __init__(self, leadership: Leadership, watcher: Watcher) -> None:
        self._leadership = leadership
        self._watcher = watcher

    def __call__(self) -> bool:
        return self._leadership.is_leader or not self._watcher.reachable


class Live:
    def __init__(
        self,
        client: ConsulClient,
        *,
        cache_dir: Path,
        replica_id: str,
        lock_delay: int = 1,
        session_ttl: int = 10,
    ) -> None:
        self.client = client
        self.cache_dir = cache_dir
        self.replica_id = replica_id
        self.config_index = 0
        self.watcher = Watcher(client)
        self.leadership = Leadership(client, replica_id, ttl=session_ttl, lock_delay=lock_delay)
        self.authority = ConsulAuthority(self.leadership, self.watcher)
        self._tasks: list[asyncio.Task[None]] = []
        metrics.watch("meridian_leader", self, _leader)
        metrics.watch("meridian_consul_reachable", self, _reachable)

    @property
    def config_key(self) -> str:
        return self.client.address.key("config")

    @property
    def cache_file(self) -> Path:
        return self.cache_dir / "consul-config.yaml"

    def store(self, cache: StateFile) -> ConsulFlipStore:
        return ConsulFlipStore(self.client, self.watcher, cache)

    def status(self) -> LiveStatus:
        a = self.client.address
        return LiveStatus(
            replica_id=self.replica_id,
            leader=self.leadership.leader_id,
            is_leader=self.leadership.is_leader,
            consul=f"{a.host}:{a.port}/{a.prefix}",
            consul_reachable=self.watcher.reachable,
        )

    async def initial(self, sources: ConfigSources) -> tuple[ConfigSources, list[ConfigError]]:
        """The sources to start with: the files with Consul's document (or its cached
        copy, when Consul does not answer), and the document's problem if it is not
        even YAML (to be audited once the log is open). Whether the merged config is
        valid is for ``ConfigSources.initial`` to say."""
        seen: list[KVSnapshot] = []

        async def keep(snap: KVSnapshot) -> None:
            seen.append(snap)

        try:
            await asyncio.wait_for(self.watcher.poll_once(keep, block=False), 3.0)
            self.watcher.reachable = True
        except (ConsulUnavailable, TimeoutError) as exc:
            log.error("consul unreachable at start (%s); using the cached copy", exc)
            # Nothing is known of Consul's document: whatever the watch finds first
            # (even "no document") is a change to apply.
            self.config_index = -1
            if self.cache_file.exists():
                layer = text_layer(self.cache_file.read_text(), "consul-cache")
                return sources.with_consul(layer), []
            return sources, []
        entry = seen[-1].entries.get(self.config_key) if seen else None
        if entry is None:
            return sources, []
        self.config_index = entry[1]
        try:
            candidate = self._build(entry[0], entry[1])(sources)
            candidate.resolve()
        except ConfigError as exc:
            return sources, [exc]
        if entry[0]:
            self._cache(entry[0])
        return candidate, []

    def _cache(self, value: bytes) -> None:
        """The last good document, for a start while Consul does not answer."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.cache_file.write_bytes(value)

    def _build(self, value: bytes | None, index: int) -> Callable[[ConfigSources], ConfigSources]:
        """The sources with Consul's document at ``index`` (``ConfigError`` if it is not
        a YAML mapping in UTF-8)."""
        name = self._layer_name(index)

        def build(sources: ConfigSources) -> ConfigSources:
            if not value:
                return sources.with_consul(None)
            try:
                text = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ConfigError([FieldError("", "not UTF-8 text")], source=name) from None
            return sources.with_consul(text_layer(text, name))

        return build

    def _layer_name(self, index: int) -> str:
        return f"consul:{self.config_key}@{index}"

    async def start(self, config: ConfigController, follower: FlipFollower) -> None:
        async def changed(snap: KVSnapshot) -> None:
            entry = snap.entries.get(self.config_key)
            index = entry[1] if entry else 0
            if index != self.config_index:
                await self._config_changed(config, entry[0] if entry else None, index)
            await self._apply_actives(follower, snap)

        if self.watcher.last is not None:
            await self._apply_actives(follower, self.watcher.last)
        self._tasks = [
            asyncio.create_task(self.watcher.run(changed), name="consul-watch"),
            asyncio.create_task(self.leadership.run(), name="consul-leader"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.leadership.resign()
        await self.client.close()

    async def _config_changed(
        self, config: ConfigController, value: bytes | None, index: int
    ) -> None:
        """Hand the document to the controller. It is handled once per ModifyIndex: an
        invalid one is rejected (and audited) there; a valid one that could not be
        applied yet (a transient failure) is retried there until it is."""
        outcome = await config.submit(self._build(value, index), source="consul")
        self.config_index = index
        if outcome is not Outcome.REJECTED:
            if value:
                self._cache(value)
            else:  # the document was deleted: a cold start must not bring it back
                self.cache_file.unlink(missing_ok=True)
        log.info("config document in consul (index %d): %s", index, outcome.value)

    async def _apply_actives(self, follower: FlipFollower, snap: KVSnapshot) -> None:
        prefix = self.client.address.key(ACTIVE_PREFIX)
        states = follower.states
        for key, (value, _) in snap.entries.items():
            if not key.startswith(prefix):
                continue
            region = key[len(prefix) :]
            parsed = flip_from_json(value)
            state = states.get(region)
            if parsed is None or state is None:
                continue
            active, flip = parsed
            if flip is None:  # written by hand (e.g. `consul kv put`): still a flip
                if active == state.active:
                    continue
                flip = Flip(state.active, active, time.time(), "consul-kv", "written to Consul KV",
                            "external", automatic=False, forced=False)  # fmt: skip
            elif active == state.active and flip == state.last_flip:
                continue
            await follower.adopt(region, flip)


def _leader(live: Live) -> metrics.Reading:
    return [(1.0 if live.leadership.is_leader else 0.0, {"replica": live.replica_id})]


def _reachable(live: Live) -> metrics.Reading:
    return [(1.0 if live.watcher.reachable else 0.0, {"replica": live.replica_id})]
