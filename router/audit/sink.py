"""Where audit records go: the durable log (``router.audit.log.AuditLog``) in every
deployment; ``MemoryAuditSink`` only where a benchmark compares against "no audit"."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from router.audit.log import Receipt


class AuditSink(Protocol):
    async def append(self, record: Mapping[str, Any]) -> Receipt | None:
        """Store ``record``; return only once it is stored (callers act after that)."""


class MemoryAuditSink:
    """Keeps records in a list; no durability, no receipts."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def append(self, record: Mapping[str, Any]) -> Receipt | None:
        self.records.append(dict(record))
        return None
