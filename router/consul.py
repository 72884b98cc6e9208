"""Consul as the live source: the routing config document, per-region active clusters,
and one health authority (leader) among router replicas.

Layout under a prefix (default ``meridian/``)::

    meridian/config            the routing config (YAML), an overlay on the file layers
    meridian/active/<region>   JSON {"active": cluster, "flip": {...}}: written with CAS
    meridian/leader            the leader lock (Consul session + acquire); value: replica id

Consul's documented rules are honoured: blocking queries (``index``/``wait``) may return
with nothing changed; an index that goes backwards resets to 0; the watch loop is
rate-limited and backs off on errors; the client's total timeout exceeds ``wait`` plus
Consul's ``wait/16`` jitter. Every foreign error is translated here into
``ConsulUnavailable`` (or a boolean for CAS outcomes).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import aiohttp
import consul
import consul.aio

from router.core.failover import Flip
from router.errors import ConsulUnavailable, MeridianError

log = logging.getLogger(__name__)

WAIT_SECONDS = 10
# py-consul's timeout is total: above wait + wait/16 (Consul's jitter), or every
# blocking query would time out (FIELD_NOTES).
CLIENT_TIMEOUT = WAIT_SECONDS + WAIT_SECONDS / 16 + 5
MIN_WATCH_INTERVAL = 0.05  # rate limit: at most 20 queries/s even if every one returns at once
MAX_BACKOFF = 5.0


@dataclass(frozen=True, slots=True)
class ConsulAddress:
    host: str
    port: int
    prefix: str = "meridian/"
    # An ACL token: a secret, so never in repr, logs or errors.
    token: str | None = field(default=None, repr=False)

    @classmethod
    def parse(
        cls, address: str, prefix: str = "meridian/", token: str | None = None
    ) -> ConsulAddress:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise MeridianError(f"--consul: {address!r} is not host:port")
        prefix = prefix.strip("/") + "/"
        return cls(host, int(port), prefix, token)

    def key(self, name: str) -> str:
        return self.prefix + name


def flip_to_json(active: str, flip: Flip | None) -> str:
    return json.dumps({"active": active, "flip": asdict(flip) if flip else None}, sort_keys=True)


def flip_from_json(raw: bytes | None) -> tuple[str, Flip | None] | None:
    """Parse an active-cluster entry; None when it is not one (logged, ignored)."""
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        flip = Flip(**doc["flip"]) if doc.get("flip") else None
        return str(doc["active"]), flip
    except (ValueError, KeyError, TypeError):
        log.error("consul: an active-cluster entry is not valid JSON of the expected shape")
        return None


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, consul.ConsulException, OSError)


def _why(exc: BaseException) -> str:
    """A failure in words for an operator (aiohttp's reprs carry its connection key and
    SSL context): the refusal or timeout, else the exception's own message."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect: {exc.os_error.strerror or exc.os_error}"
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class ConsulClient:
    """The few KV and session calls Meridian makes, each translated and bounded."""

    def __init__(self, address: ConsulAddress) -> None:
        self.address = address
        self._client: consul.aio.Consul | None = None

    def _c(self) -> consul.aio.Consul:
        if self._client is None:
            self._client = consul.aio.Consul(
                host=self.address.host,
                port=self.address.port,
                token=self.address.token,
                connections_timeout=CLIENT_TIMEOUT,
            )
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.http.close()
            self._client = None

    async def get(
        self, key: str, *, index: int = 0, wait: str | None = None, recurse: bool = False
    ) -> tuple[int, Any]:
        try:
            idx, value = await self._c().kv.get(
                key, index=index or None, wait=wait, recurse=recurse
            )
        except _ERRORS as exc:
            raise ConsulUnavailable(
                f"consul {self.address.host}:{self.address.port}: {_why(exc)}"
            ) from exc
        return int(idx or 0), value

    async def put(self, key: str, value: str, **kw: Any) -> bool:
        try:
            return bool(await self._c().kv.put(key, value, **kw))
        except _ERRORS as exc:
            raise ConsulUnavailable(
                f"consul {self.address.host}:{self.address.port}: {_why(exc)}"
            ) from exc

    async def session_create(self, name: str, ttl: int, lock_delay: int) -> str:
        try:
            sid: str = await self._c().session.create(
                name=name, ttl=ttl, lock_delay=lock_delay, behavior="release"
            )
        except _ERRORS as exc:
            raise ConsulUnavailable(f"consul session create: {_why(exc)}") from exc
        return sid

    async def session_renew(self, sid: str) -> bool:
        try:
            await self._c().session.renew(sid)
        except consul.NotFound:
            return False
        except _ERRORS as exc:
            raise ConsulUnavailable(f"consul session renew: {_why(exc)}") from exc
        return True

    async def session_destroy(self, sid: str) -> None:
        with contextlib.suppress(*_ERRORS):
            await self._c().session.destroy(sid)


@dataclass
class KVSnapshot:
    """The watched keys as last seen: value and ModifyIndex of each."""

    entries: dict[str, tuple[bytes | None, int]]

    @classmethod
    def from_entries(cls, items: list[Mapping[str, Any]] | None) -> KVSnapshot:
        return cls({e["Key"]: (e.get("Value"), int(e["ModifyIndex"])) for e in items or []})


OnChange = Callable[["KVSnapshot"], Awaitable[None]]


class Watcher:
    """One blocking-query loop over the prefix; calls ``on_change`` with the full
    snapshot whenever any key under it changed (by ModifyIndex). It keeps the last
    snapshot it handled (``last``: the ModifyIndex a check-and-set writer compares
    against) and whether Consul answers (``reachable``); it holds no callbacks."""

    def __init__(self, client: ConsulClient) -> None:
        self.client = client
        self.index = 0
        self.last: KVSnapshot | None = None
        self.reachable = False

    async def poll_once(self, on_change: OnChange, *, block: bool) -> KVSnapshot:
        """One query (blocking from the last index when ``block``); dispatches changes."""
        index = self.index if block else 0
        new_index, items = await self.client.get(
            self.client.address.prefix, index=index, wait=f"{WAIT_SECONDS}s", recurse=True
        )
        snap = KVSnapshot.from_entries(items)
        if self.last is None or snap.entries != self.last.entries:
            # Handled first, remembered after: a change whose handling failed is seen
            # (and handled) again on the next query.
            await on_change(snap)
            self.last = snap
        # Consul: an index that goes backwards (a restored or new cluster) resets to 0.
        self.index = new_index if new_index >= self.index else 0
        return snap

    async def run(self, on_change: OnChange) -> None:
        backoff = 0.2
        while True:
            started = time.monotonic()
            try:
                await self.poll_once(on_change, block=self.last is not None)
            except ConsulUnavailable as exc:
                if self.reachable:
                    log.error("consul unreachable, serving the current config: %s", exc.message)
                self._set_reachable(False)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            except Exception:
                # A bug in handling one change must not end the watch for good.
                log.exception("consul watch: handling a change failed; watching on")
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
                continue
            backoff = 0.2
            self._set_reachable(True)
            spent = time.monotonic() - started
            if spent < MIN_WATCH_INTERVAL:
                await asyncio.sleep(MIN_WATCH_INTERVAL - spent)

    def _set_reachable(self, ok: bool) -> None:
        if ok != self.reachable:
            self.reachable = ok
            if ok:
                log.info("consul reachable again")
            else:
                log.warning("consul unreachable: this replica now decides automatic flips itself")


class Leadership:
    """Leader election with a Consul session and a lock key (Consul's documented
    recipe). Only the leader decides automatic flips. If the leader dies, its session's
    TTL expires, the lock is released, and after the lock delay another replica takes it.
    """

    def __init__(
        self,
        client: ConsulClient,
        replica_id: str,
        *,
        ttl: int = 10,
        lock_delay: int = 1,
    ) -> None:
        self.client = client
        self.replica_id = replica_id
        self.ttl = ttl
        self.lock_delay = lock_delay
        self.is_leader = False
        self.leader_id = ""
        self._session = ""

    @property
    def key(self) -> str:
        return self.client.address.key("leader")

    def _set(self, leader: bool) -> None:
        if leader != self.is_leader:
            self.is_leader = leader
            log.warning(
                "replica %s is %s the leader", self.replica_id, "now" if leader else "no longer"
            )

    async def run(self) -> None:
        while True:
            try:
                self._session = await self.client.session_create(
                    f"meridian-{self.replica_id}", self.ttl, self.lock_delay
                )
                renew = asyncio.create_task(self._renew())
                try:
                    await self._campaign(renew)
                finally:
                    renew.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renew
            except ConsulUnavailable as exc:
                log.error("leader election: %s", exc.message)
            self._set(False)
            self.leader_id = ""
            await asyncio.sleep(1.0)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            if not await self.client.session_renew(self._session):
                log.error("leader election: session %s expired", self._session)
                return

    async def _campaign(self, renew: asyncio.Task[None]) -> None:
        while not renew.done():
            acquired = await self.client.put(self.key, self.replica_id, acquire=self._session)
            self._set(acquired)
            # Who holds it now; then, if someone does, wait until that changes.
            index, entry = await self.client.get(self.key)
            holder = entry.get("Session") if entry else None
            value = entry.get("Value") if entry else None
            self.leader_id = value.decode() if holder and value else ""
            if holder is None:
                # Free but refused: within the lock delay after a leader died. Retry soon.
                self._set(False)
                await asyncio.sleep(0.25)
                continue
            await self.client.get(self.key, index=index, wait="5s")

    async def resign(self) -> None:
        """Give the lock up at once (a graceful stop): no TTL wait for the others."""
        if self._session:
            await self.client.session_destroy(self._session)
        self._set(False)
