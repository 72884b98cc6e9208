"""Replicas sharing one live config and one set of active clusters through Consul.

``Live`` owns the Consul watch and the leader election of one router replica and drives
the service: a changed config document is merged with the file and environment layers,
validated, and swapped in whole (or rejected whole, audited, and shown in status); a
changed active-cluster entry is adopted by the failover controller; flips this replica
decides are written with check-and-set (``ConsulFlipStore``).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from router.config.layers import Layer, resolve
from router.config.load import parse_yaml
from router.config.settings import ResolvedConfig
from router.consul import (
    ConsulClient,
    KVSnapshot,
    Leadership,
    Watcher,
    flip_from_json,
    flip_to_json,
)
from router.core.failover import Flip, RegionState
from router.errors import ConfigError, ConsulUnavailable, FieldError, MeridianError
from router.failover import StateFile

if TYPE_CHECKING:
    from router.service import Meridian

log = logging.getLogger(__name__)

ACTIVE_PREFIX = "active/"


@dataclass(frozen=True, slots=True)
class LiveStatus:
    replica_id: str
    leader: str
    is_leader: bool
    consul: str
    consul_reachable: bool


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


class Live:
    def __init__(
        self,
        client: ConsulClient,
        *,
        file_layers: Sequence[Layer],
        env: Layer | None,
        cache_dir: Path,
        replica_id: str,
        lock_delay: int = 1,
        session_ttl: int = 10,
    ) -> None:
        self.client = client
        self.file_layers = list(file_layers)
        self.env = env
        self.cache_dir = cache_dir
        self.replica_id = replica_id
        self.consul_doc: Layer | None = None
        self.config_index = 0
        self.meridian: Meridian | None = None
        self.watcher = Watcher(client, self._changed, on_reachable=self._reachable)
        self.leadership = Leadership(client, replica_id, ttl=session_ttl, lock_delay=lock_delay)
        self._tasks: list[asyncio.Task[None]] = []
        # Rejections seen before there is a service to audit them (at start-up).
        self._early_rejections: list[ConfigError] = []

    @property
    def config_key(self) -> str:
        return self.client.address.key("config")

    @property
    def cache_file(self) -> Path:
        return self.cache_dir / "consul-config.yaml"

    def layers(self, consul_doc: Layer | None) -> list[Layer]:
        return [
            *self.file_layers,
            *([consul_doc] if consul_doc else []),
            *([self.env] if self.env else []),
        ]

    def authority(self) -> bool:
        return self.leadership.is_leader or not self.watcher.reachable

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

    async def initial(self) -> tuple[ResolvedConfig, list[ConfigError]]:
        """The config to start with: files + Consul (or its cached copy) + env. A bad
        Consul document is left out (and returned, to be audited once serving)."""
        problems = self._early_rejections
        try:
            await asyncio.wait_for(self.watcher.poll_once(block=False), 3.0)
            self.watcher.reachable = True
        except (ConsulUnavailable, TimeoutError) as exc:
            log.error("consul unreachable at start (%s); using the cached copy", exc)
            if self.cache_file.exists():
                self.consul_doc = self._layer(self.cache_file.read_text(), "consul-cache")
        if self.consul_doc is not None:
            try:
                return resolve(self.layers(self.consul_doc)), problems
            except ConfigError as exc:
                problems.append(exc)
                self.consul_doc = None
        return resolve(self.layers(None)), problems

    def _layer(self, text: str, name: str) -> Layer:
        doc = parse_yaml(text, source=name) if text.strip() else {}
        if doc is None:
            doc = {}
        if not isinstance(doc, Mapping):
            raise ConfigError([FieldError("", "the document must be a mapping")], source=name)
        return Layer(name, doc)

    async def start(self, meridian: Meridian) -> None:
        self.meridian = meridian
        if self.watcher.last is not None:
            await self._apply_actives(self.watcher.last)
        self._tasks = [
            asyncio.create_task(self.watcher.run(), name="consul-watch"),
            asyncio.create_task(self.leadership.run(), name="consul-leader"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.leadership.resign()
        await self.client.close()

    def _reachable(self, ok: bool) -> None:
        if not ok:
            log.warning("consul unreachable: this replica now decides automatic flips itself")

    async def _changed(self, snap: KVSnapshot) -> None:
        entry = snap.entries.get(self.config_key)
        index = entry[1] if entry else 0
        if index != self.config_index:
            await self._config_changed(entry[0] if entry else None, index)
        await self._apply_actives(snap)

    async def _config_changed(self, value: bytes | None, index: int) -> None:
        self.config_index = index
        name = f"consul:{self.config_key}@{index}"
        try:
            layer = self._layer((value or b"").decode("utf-8"), name) if value else None
            config = resolve(self.layers(layer))
        except (ConfigError, UnicodeDecodeError) as exc:
            error = (
                exc
                if isinstance(exc, ConfigError)
                else ConfigError([FieldError("", "not UTF-8 text")], source=name)
            )
            log.error("config change in consul rejected; keeping the current one\n%s", error)
            if self.meridian is not None:
                await self.meridian.reject_config(error)
            else:
                self._early_rejections.append(error)
            return
        self.consul_doc = layer
        if value is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            self.cache_file.write_text(value.decode("utf-8"))
        if self.meridian is not None and config.version != self.meridian.config.version:
            try:
                await self.meridian.apply_config(config)
            except ConfigError:
                raise
            except MeridianError as exc:
                # Valid, but not applicable here (e.g. a new region whose key ring this
                # replica lacks): rejected whole, like an invalid one.
                error = ConfigError([FieldError("", f"cannot apply: {exc.message}")], source=name)
                log.error("config change in consul not applied; keeping the current one\n%s", error)
                await self.meridian.reject_config(error)
                return
            log.info("config from consul applied: version %s (index %d)", config.version, index)

    async def _apply_actives(self, snap: KVSnapshot) -> None:
        if self.meridian is None:
            return
        prefix = self.client.address.key(ACTIVE_PREFIX)
        states = self.meridian.failover.states
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
            await self.meridian.failover.adopt(region, flip)
