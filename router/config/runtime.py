"""The config controller: the one owner of a router's live config.

Every change, whatever brought it (a SIGHUP re-reading the files, a new Consul document),
goes through ``ConfigController.submit``, one at a time:

1. Build the candidate sources and resolve them. A document that fails validation (or a
   check a subscriber registered, like the listener's TLS) is **invalid**: rejected
   whole, audited (``config.change`` rejected, with every error), shown in status until
   a later change supersedes it; the last good config keeps serving.
2. Load the key ring of every region (new regions get one, and a refresh task; removed
   regions lose theirs) and build each region's codec from the ``codec`` settings.
3. Audit ``config.change`` accepted, then tell the subscribers (the client pool, the
   cluster state: prober and failover) in order, then swap the current value.

A **transient** failure in 2 or 3 (a region's key ring not rolled out yet, the audit log
briefly unwritable, a subscriber failing) is not a rejection: the candidate stays wanted
(``pending_reason`` says why, status shows it) and is applied again with backoff until it
goes in or a newer change replaces it; it is audited as accepted once. Subscribers must
be idempotent: a retried change is applied again.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from temporalio.converter import DataConverter

from router import metrics
from router.audit import AuditSink, config_record, key_rotation_record
from router.codec import KeyProvider, KeyRingHolder, RegionCodec, RingChange, data_converter
from router.config.settings import CodecSettings, ResolvedConfig
from router.config.sources import ConfigSources
from router.errors import ConfigError, FieldError, KeyRingError, MeridianError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegionKeys:
    """One region's key ring (kept current by its refresh task) and the converter every
    client of that region encodes and decodes with."""

    holder: KeyRingHolder
    settings: CodecSettings
    converter: DataConverter


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """What is live now: the resolved config and each of its regions' keys."""

    config: ResolvedConfig
    regions: Mapping[str, RegionKeys]

    @property
    def converters(self) -> Mapping[str, DataConverter]:
        return MappingProxyType({r: k.converter for r, k in self.regions.items()})

    def key_id(self, region: str) -> str:
        """The id of the key new payloads of ``region`` are encrypted with."""
        return self.regions[region].holder.ring.active


class Outcome(enum.Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    REJECTED = "rejected"
    # A transient failure: the change is retried until applied or replaced.
    PENDING = "pending"


Subscriber = Callable[[RuntimeConfig], Awaitable[None]]
Build = Callable[[ConfigSources], ConfigSources]
# A check a valid config must also pass to be applied here (e.g. the listener's TLS,
# fixed once the port is bound): problems, with their dotted paths.
Check = Callable[[ResolvedConfig], list[FieldError]]


class ConfigController:
    def __init__(
        self,
        sources: ConfigSources,
        first: ResolvedConfig,
        *,
        keys: KeyProvider,
        audit: AuditSink,
        retry_initial: float = 0.2,
        retry_max: float = 5.0,
        key_refresh_interval: float = 1.0,
    ) -> None:
        self._sources = sources
        self._keys = keys
        self._audit = audit
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._key_refresh = key_refresh_interval
        self._subscribers: list[Subscriber] = []
        self._checks: list[Check] = []
        self._lock = asyncio.Lock()
        # Sources wanted but not applied yet (a transient failure is being retried).
        self._wanted: ConfigSources | None = None
        # The version audited as accepted but not applied yet (a retry does not audit
        # it twice), and whether subscribers may hold a config that is not current.
        self._accepted: str | None = None
        self._dirty = False
        # Why a valid change is not applied yet ("" when none waits): shown in status.
        self.pending_reason = ""
        self._retry: asyncio.Task[None] | None = None
        self._refresh: dict[str, asyncio.Task[None]] = {}
        # Fail closed at start-up: a region without its keys cannot be served.
        self._current = RuntimeConfig(first, self._region_keys(first, None))
        # The last change rejected, shown in status until a change submitted after it
        # supersedes it (the audit log keeps every rejection): one applied, or a valid
        # one from the same origin ("file", "consul") that is the live config again (the
        # invalid edit reverted). Neither a SIGHUP with the files unchanged nor a retry
        # of a change submitted before the rejection hides it: the rejected document
        # (say Consul's) is still what its origin holds. Submissions are numbered to
        # tell "after" from "before".
        self.last_rejected: tuple[float, ConfigError] | None = None
        self._rejected_origin = ""
        self._rejected_seq = 0
        self._seq = 0
        self._wanted_seq = 0
        metrics.watch("meridian_config_info", self, _config_info)
        metrics.watch("meridian_config_pending", self, _config_pending)

    # -- reading -------------------------------------------------------------------

    @property
    def current(self) -> RuntimeConfig:
        return self._current

    @property
    def config(self) -> ResolvedConfig:
        return self._current.config

    @property
    def pending(self) -> bool:
        """A change is waiting to be applied again after a transient failure."""
        return self._wanted is not None

    def add_check(self, check: Check) -> None:
        """A change ``check`` finds problems with is rejected whole, like an invalid one."""
        self._checks.append(check)

    def subscribe(self, subscriber: Subscriber) -> None:
        """``subscriber(runtime)`` runs on start and on every applied change, in the
        order of subscription, before the change is current."""
        self._subscribers.append(subscriber)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, early_rejections: Sequence[ConfigError] = ()) -> None:
        """Bring the subscribers up on the first config and audit it (``loaded``), and
        any change rejected before the log was open (an invalid Consul document found
        at start-up)."""
        self._sync_refresh(self._current)
        for subscriber in self._subscribers:
            await subscriber(self._current)
        try:
            await self._audit.append(
                config_record(
                    outcome="loaded",
                    source=self.config.source,
                    version=self.config.version,
                    table=self.config.table,
                )
            )
            for problem in early_rejections:
                await self._reject(problem, origin="consul", seq=0)
        except MeridianError as exc:
            log.error("could not record the config in the audit log: %s", exc.message)

    async def close(self) -> None:
        tasks = [*self._refresh.values(), *([self._retry] if self._retry else [])]
        self._refresh.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- changes -------------------------------------------------------------------

    async def reload(self) -> Outcome:
        """The files again (SIGHUP): applied whole, or rejected whole."""
        return await self.submit(ConfigSources.reread, source="file")

    async def submit(self, build: Build, *, source: str = "file") -> Outcome:
        """Apply the sources ``build`` makes from the latest wanted ones. ``build`` may
        raise ``ConfigError`` (e.g. a document that is not YAML): a rejection.
        ``source`` names what brought the change (file, consul), for the metrics."""
        outcome = await self._submit(build, source)
        metrics.config_reloads.add(1, source, outcome.value)
        return outcome

    async def _submit(self, build: Build, origin: str) -> Outcome:
        async with self._lock:
            self._seq += 1
            seq = self._seq
            base = self._wanted or self._sources
            try:
                candidate = build(base)
                config = candidate.resolve()
                problems = [e for check in self._checks for e in check(config)]
                if problems:
                    raise ConfigError(problems, source=config.source)
            except ConfigError as exc:
                log.error("config change rejected; keeping %s\n%s", self.config.version, exc)
                await self._reject(exc, origin=origin, seq=seq)
                return Outcome.REJECTED
            self._wanted, self._wanted_seq = candidate, seq
            outcome = await self._apply(candidate, config)
            if outcome is Outcome.UNCHANGED and origin == self._rejected_origin:
                self._supersede(seq)
            return outcome

    async def _apply(self, candidate: ConfigSources, config: ResolvedConfig) -> Outcome:
        current = self._current
        if config.version == current.config.version:
            if self._dirty:
                # A change given up for this one reached some subscribers: bring them
                # back to what is current.
                try:
                    await self._notify(current)
                except Exception as exc:
                    return self._pending(config, exc)
            self._sources, self._wanted, self._dirty = candidate, None, False
            self.pending_reason = ""
            return Outcome.UNCHANGED
        try:
            runtime = RuntimeConfig(config, self._region_keys(config, current))
        except KeyRingError as exc:
            # Valid, but a region's keys are not here yet (rolled out after the config,
            # or a file briefly unreadable): not a rejection. Fail closed meanwhile: the
            # last good config serves, and the change is retried until the keys come.
            return self._pending(config, exc)
        try:
            if self._accepted != config.version:  # a retry is not a second acceptance
                await self._audit.append(
                    config_record(
                        outcome="accepted",
                        source=config.source,
                        version=config.version,
                        previous=current.config.version,
                        table=config.table,
                    )
                )
                self._accepted = config.version
            self._dirty = True
            await self._notify(runtime)
        except Exception as exc:
            return self._pending(config, exc)
        applied_seq = self._wanted_seq
        self._current, self._sources, self._wanted = runtime, candidate, None
        self._dirty, self._accepted, self.pending_reason = False, None, ""
        self._supersede(applied_seq)
        self._sync_refresh(runtime)
        log.info("config applied: version %s from %s", config.version, config.source)
        return Outcome.APPLIED

    async def _notify(self, runtime: RuntimeConfig) -> None:
        for subscriber in self._subscribers:
            await subscriber(runtime)

    def _pending(self, config: ResolvedConfig, exc: Exception) -> Outcome:
        why = exc.message if isinstance(exc, MeridianError) else f"{type(exc).__name__}: {exc}"
        self.pending_reason = f"version {config.version} not applied yet: {why}"
        log.error(
            "config %s not applied yet (%s); retrying, %s keeps serving",
            config.version,
            why,
            self._current.config.version,
            exc_info=not isinstance(exc, MeridianError),
        )
        self._schedule_retry()
        return Outcome.PENDING

    def _supersede(self, seq: int) -> None:
        """Status stops showing the last rejection once a change submitted after it
        (number ``seq``) is what serves; the audit log keeps it."""
        if self.last_rejected is not None and seq > self._rejected_seq:
            self.last_rejected = None

    async def _reject(self, error: ConfigError, *, origin: str, seq: int) -> None:
        self.last_rejected = (time.time(), error)
        self._rejected_origin, self._rejected_seq = origin, seq
        try:
            await self._audit.append(
                config_record(
                    outcome="rejected",
                    source=error.source,
                    version="",
                    previous=self.config.version,
                    errors=[str(e) for e in error.errors],
                )
            )
        except MeridianError as exc:
            # Nothing changed, so nothing waits on this record; it is logged instead.
            log.error("could not audit a config rejection: %s", exc.message)

    def _schedule_retry(self) -> None:
        if self._retry is None or self._retry.done():
            self._retry = asyncio.create_task(self._retry_loop(), name="config-retry")

    async def _retry_loop(self) -> None:
        delay = self._retry_initial
        while True:
            await asyncio.sleep(delay)
            async with self._lock:
                candidate = self._wanted
                if candidate is None:
                    return
                try:
                    outcome = await self._apply(candidate, candidate.resolve())
                except Exception:
                    log.exception("config retry failed; trying again")
                    outcome = Outcome.PENDING
                if outcome is not Outcome.PENDING:
                    return
            delay = min(self._retry_max, delay * 2)

    # -- keys ----------------------------------------------------------------------

    def _region_keys(
        self, config: ResolvedConfig, current: RuntimeConfig | None
    ) -> Mapping[str, RegionKeys]:
        """Each region's ring (kept from ``current`` where the region stays, loaded for
        new ones: ``KeyRingError`` if missing) and its codec for ``config.codec``."""
        out: dict[str, RegionKeys] = {}
        for region in config.table.regions:
            old = current.regions.get(region) if current else None
            if old is not None and old.settings == config.codec:
                out[region] = old
                continue
            holder = old.holder if old is not None else KeyRingHolder(self._keys, region)
            codec = RegionCodec(
                holder,
                compression=config.codec.compression,
                compression_min_bytes=config.codec.compression_min_bytes,
            )
            out[region] = RegionKeys(holder, config.codec, data_converter(codec))
        return MappingProxyType(out)

    def _sync_refresh(self, runtime: RuntimeConfig) -> None:
        """One refresh task per region of the live config (a rotation reaches the
        router within a second); none for regions that left it."""
        for region in list(self._refresh):
            if region not in runtime.regions:
                self._refresh.pop(region).cancel()
        for region, keys in runtime.regions.items():
            if region not in self._refresh:
                self._refresh[region] = asyncio.create_task(
                    keys.holder.refresh_forever(self._key_refresh, self._ring_changed),
                    name=f"keys-{region}",
                )

    async def _ring_changed(self, change: RingChange) -> None:
        """Audited before the router encrypts with the new ring (raises, and the ring
        waits for the next refresh, when the record cannot be written)."""
        await self._audit.append(key_rotation_record(change, component="router"))

    def refreshing(self) -> frozenset[str]:
        """Regions whose key ring is being refreshed now (for tests and status)."""
        return frozenset(r for r, t in self._refresh.items() if not t.done())


def _config_info(ctl: ConfigController) -> metrics.Reading:
    config = ctl.config
    return [(1.0, {"version": config.version, "source": config.source})]


def _config_pending(ctl: ConfigController) -> metrics.Reading:
    return [(1.0 if ctl.pending_reason else 0.0, {})]
