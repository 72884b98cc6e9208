"""Denials and authentication failures in the audit log, aggregated.

The first denial of a principal (or, before authentication, of a peer address) in an
interval is written at once; the rest of that interval are counted and written as one
record when it ends, with the count and the RPCs and reasons seen. A flood of bad
requests therefore costs one record per principal per interval, not one per request;
past ``max_keys`` distinct callers in an interval, the excess shares one bucket.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from router.audit import AuditSink, access_record
from router.errors import MeridianError

log = logging.getLogger(__name__)

OTHERS = "(others)"


@dataclass
class _Window:
    start: float
    first_time: float
    auth: str
    pending: int = 0
    rpcs: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)


class DenialLog:
    def __init__(
        self,
        audit: AuditSink,
        *,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._audit = audit
        self._max_keys = max_keys
        self._clock = clock
        self._wall = wall
        self._windows: dict[tuple[str, str], _Window] = {}
        self.counts: Counter[str] = Counter()

    async def record(
        self, kind: str, who: str, *, auth: str, rpc: str, reason: str, interval: float
    ) -> None:
        """``kind``: ``auth.failure`` (no principal: ``who`` is the peer's address) or
        ``auth.denied`` (``who`` is the principal)."""
        self.counts[kind] += 1
        now = self._clock()
        key = (kind, who)
        if key not in self._windows and len(self._windows) >= self._max_keys:
            key = (kind, OTHERS)
        window = self._windows.get(key)
        if window is not None and now - window.start >= interval:
            await self._flush(key, window)
            window = None
        if window is None:
            self._windows[key] = _Window(start=now, first_time=self._wall(), auth=auth)
            await self._write(kind, key[1], auth=auth, count=1, rpcs={rpc: 1},
                              reasons={reason: 1}, aggregated=False)  # fmt: skip
            return
        window.pending += 1
        window.rpcs[rpc] += 1
        window.reasons[reason] += 1

    async def flush(self, *, interval: float, force: bool = False) -> None:
        """Write the counted rest of every window that has ended (all, with ``force``)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if force or now - window.start >= interval:
                await self._flush(key, window)
                del self._windows[key]

    async def run(self, interval: Callable[[], float]) -> None:
        while True:
            every = interval()
            await asyncio.sleep(every)
            await self.flush(interval=every)

    async def _flush(self, key: tuple[str, str], window: _Window) -> None:
        if window.pending:
            await self._write(key[0], key[1], auth=window.auth, count=window.pending,
                              rpcs=dict(window.rpcs), reasons=dict(window.reasons),
                              aggregated=True, since=window.first_time)  # fmt: skip
            window.pending = 0

    async def _write(
        self,
        kind: str,
        who: str,
        *,
        auth: str,
        count: int,
        rpcs: dict[str, int],
        reasons: dict[str, int],
        aggregated: bool,
        since: float | None = None,
    ) -> None:
        record = access_record(
            kind=kind, who=who, auth=auth, count=count, rpcs=rpcs, reasons=reasons,
            aggregated=aggregated, since=since,
        )  # fmt: skip
        try:
            await self._audit.append(record)
        except MeridianError as exc:
            # A denial changes nothing, so nothing waits on its record; never let the
            # audit log's trouble turn a denial into an acceptance or an error.
            log.error("could not audit %s of %s: %s", kind, who, exc.message)
