"""Start quotas per tenant and per principal (token buckets, ``router.core.quota``).

A start takes a token from its tenant's bucket and from its principal's; it goes ahead
only if both have one (and then both are charged), else RESOURCE_EXHAUSTED with the
seconds until the emptier bucket refills. Buckets live in memory, per replica, bounded
(least recently used dropped first: a dropped bucket starts full again, so the bound
errs on the caller's side, never on refusing).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from router.config.settings import QuotaSettings
from router.core.quota import Bucket, Quota, take
from router.errors import QuotaExceeded


class Quotas:
    def __init__(
        self, *, max_buckets: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._buckets: OrderedDict[tuple[str, str, Quota], Bucket] = OrderedDict()
        self._max = max_buckets
        self._clock = clock
        # Refused starts by scope ("tenant", "principal"): counted for status and metrics.
        self.exceeded: Counter[str] = Counter()

    def check(self, settings: QuotaSettings, *, tenant: str, principal: str) -> None:
        now = self._clock()
        staged: list[tuple[tuple[str, str, Quota], Bucket]] = []
        for scope, name, quota in (
            ("tenant", tenant, settings.for_tenant(tenant)),
            ("principal", principal, settings.for_principal(principal)),
        ):
            if quota is None or not name:
                continue
            key = (scope, name, quota)  # a changed quota starts a fresh bucket
            bucket = self._buckets.get(key) or Bucket.full(quota, now)
            bucket, wait = take(bucket, quota, now)
            if wait > 0:
                self.exceeded[scope] += 1
                self._store(key, bucket)
                raise QuotaExceeded(
                    f"start quota of {scope} {name} exceeded ({quota.rate:g}/s, burst "
                    f"{quota.burst}); retry in {wait:.2f} s",
                    retry_after=wait,
                    scope=scope,
                )
            staged.append((key, bucket))
        for key, bucket in staged:
            self._store(key, bucket)

    def _store(self, key: tuple[str, str, Quota], bucket: Bucket) -> None:
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
