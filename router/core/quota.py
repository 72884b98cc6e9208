"""Start quotas as token buckets. Pure: the time is passed in.

A bucket holds up to ``burst`` tokens and refills at ``rate`` per second; a start takes
one. An empty bucket answers how long until the next token, which is the retry hint
the caller gets with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Quota:
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated: float

    @classmethod
    def full(cls, quota: Quota, now: float) -> Bucket:
        return cls(float(quota.burst), now)


def take(bucket: Bucket, quota: Quota, now: float) -> tuple[Bucket, float]:
    """Take one token. Returns the new bucket and 0.0 when allowed, else the unchanged
    (refilled) bucket and the seconds until a token will be there."""
    elapsed = max(0.0, now - bucket.updated)
    tokens = min(float(quota.burst), bucket.tokens + elapsed * quota.rate)
    if tokens >= 1.0:
        return Bucket(tokens - 1.0, now), 0.0
    return Bucket(tokens, now), (1.0 - tokens) / quota.rate
