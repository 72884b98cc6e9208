"""Where audit records go."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger("meridian.audit")


class AuditSink(Protocol):
    async def write(self, record: Mapping[str, Any]) -> None:
        """Store ``record``; return only once it is stored (callers act after that)."""


class LogAuditSink:
    """Records as one JSON line each on the ``meridian.audit`` logger."""

    async def write(self, record: Mapping[str, Any]) -> None:
        log.info("%s", json.dumps(record, sort_keys=True, separators=(",", ":")))
